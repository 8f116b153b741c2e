"""Batch work beside the stream: reconciliation, seeding and backfills."""
