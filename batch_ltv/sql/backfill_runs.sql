-- Every backfill run, so a user can see what was recomputed, when, and how it
-- ended. {schema} is an allow-listed identifier (the product DB's rank schema).
-- A run whose process died stays 'running' with no finished_at.
CREATE TABLE IF NOT EXISTS {schema}.backfill_runs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('history', 'target')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at TIMESTAMPTZ NULL,
    rows BIGINT NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'succeeded', 'failed', 'dry-run')),
    detail TEXT NOT NULL DEFAULT '',
    params JSONB NOT NULL DEFAULT jsonb_build_object()
);
