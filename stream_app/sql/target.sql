-- Rank tables of the product database, created idempotently by the stream worker at
-- start and by stream_app.target.apply_schema. {schema} is filled in from an
-- allow-listed identifier; the product reads the `public` schema.

CREATE SCHEMA IF NOT EXISTS {schema};

-- One row per live user: the original system's four columns plus what the stream
-- needs. source_lsn is the version of the row: an event with an LSN at or below it
-- is stale and never overwrites it. stat_date is the day of the source commit.
CREATE TABLE IF NOT EXISTS {schema}.user_ltv_history (
    user_id BIGINT PRIMARY KEY,
    stat_date DATE NOT NULL,
    ltv BIGINT NOT NULL CHECK (ltv >= 0),
    user_class TEXT NOT NULL,
    discount_pct SMALLINT NOT NULL CHECK (discount_pct BETWEEN 0 AND 100),
    source_lsn BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every change of a user's rank class, appended in the transaction that made it.
-- old_class is NULL when the user first appears, new_class NULL when deleted.
CREATE TABLE IF NOT EXISTS {schema}.rank_changes (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    old_class TEXT NULL,
    new_class TEXT NULL,
    ltv BIGINT NOT NULL,
    source_lsn BIGINT NOT NULL,
    source_committed_at TIMESTAMPTZ NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rank_changes_user_id_idx
    ON {schema}.rank_changes (user_id, id);

-- Messages the worker could not parse, with the reason; the worker goes on.
CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
    id BIGSERIAL PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    raw TEXT NOT NULL,
    reason TEXT NOT NULL
);

-- Deleted users: the LSN of the delete. An event at or below it is stale and cannot
-- bring the user back; a later one (an undelete) removes the tombstone.
CREATE TABLE IF NOT EXISTS {schema}.user_ltv_tombstones (
    user_id BIGINT PRIMARY KEY,
    source_lsn BIGINT NOT NULL,
    source_committed_at TIMESTAMPTZ NOT NULL
);
