-- Test output: the rows the Kafka sink would send, kept in a table so that tests
-- can read what was emitted. emitted_at only orders the rows; it is not sent.

CREATE TABLE IF NOT EXISTS revetl.ltv_changes_out
(
    user_id Int64,
    ltv Int64,
    sale_count UInt64,
    source_lsn UInt64,
    source_ts_ms Int64,
    user_deleted UInt8,
    emitted_at DateTime64(6) DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY emitted_at;

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.ltv_changes_out_mv TO revetl.ltv_changes_out AS
SELECT user_id, ltv, sale_count, source_lsn, source_ts_ms, user_deleted
FROM revetl.ltv_changes;
