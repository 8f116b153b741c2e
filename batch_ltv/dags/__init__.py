"""The workflow files Airflow loads: seeding and backfills, triggered by hand."""
