-- Production output: every block of revetl.ltv_changes is POSTed as JSONEachRow
-- to the LTV relay (services/relay_server.py), which puts each row on the LTV
-- topic as one message {"user_id", "ltv", "sale_count", "source_lsn",
-- "source_ts_ms", "user_deleted"}, integers unquoted. Swappable with
-- plain_sink.sql, which keeps the same rows in a table for tests.
--
-- The relay answers only once Kafka has acknowledged the whole block, and with an
-- error otherwise; the error fails the insert, so the Kafka engine does not commit
-- the block's offsets and reads it again (at least once). A relay that is down
-- stops the pipeline at this point until it is back; nothing is lost.
--
-- Not ClickHouse's Kafka engine as a sink: it opens and tears down a producer for
-- every insert, which held each block back 20 ms, 1 s or 2 s (measured on chDB
-- 3.7.2). The messages have no key; the LTV topic has one partition, so a
-- user's messages keep the order of the blocks.

CREATE TABLE IF NOT EXISTS revetl.ltv_relay_sink
(
    user_id Int64,
    ltv Int64,
    sale_count UInt64,
    source_lsn UInt64,
    source_ts_ms Int64,
    user_deleted UInt8
)
ENGINE = URL({{relay_url}}, 'JSONEachRow')
SETTINGS output_format_json_quote_64bit_integers = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.ltv_relay_sink_mv TO revetl.ltv_relay_sink AS
SELECT user_id, ltv, sale_count, source_lsn, source_ts_ms, user_deleted
FROM revetl.ltv_changes;
