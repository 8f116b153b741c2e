-- Production output: every row of revetl.ltv_changes becomes one JSONEachRow
-- message on the LTV topic, {"user_id", "ltv", "sale_count", "source_lsn",
-- "source_ts_ms", "user_deleted"}, integers unquoted. Swappable with
-- plain_sink.sql, which keeps the same rows in a table for tests.
--
-- The messages have no key: the Kafka engine takes a key only from a column named
-- _key, which it then also writes into the JSON (measured), and the contract is
-- the six fields. A user's messages keep their order only within one partition,
-- so give the LTV topic one partition, or order by source_lsn downstream.

CREATE TABLE IF NOT EXISTS revetl.ltv_kafka_sink
(
    user_id Int64,
    ltv Int64,
    sale_count UInt64,
    source_lsn UInt64,
    source_ts_ms Int64,
    user_deleted UInt8
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = {{kafka_brokers}},
    kafka_topic_list = {{ltv_topic}},
    kafka_group_name = {{sink_group}},
    kafka_format = 'JSONEachRow',
    kafka_max_rows_per_message = 1,
    output_format_json_quote_64bit_integers = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.ltv_kafka_sink_mv TO revetl.ltv_kafka_sink AS
SELECT user_id, ltv, sale_count, source_lsn, source_ts_ms, user_deleted
FROM revetl.ltv_changes;
