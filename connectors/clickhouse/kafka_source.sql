-- Production intake: one Kafka table reads both Debezium topics and feeds
-- revetl.cdc_landing (pipeline.sql). One table with one consumer, not one per
-- topic, so that the blocks of users and sales events are processed one at a
-- time (see "Why the LTV is exact" in pipeline.sql). kafka_max_block_size keeps
-- every insert to one block. RawBLOB hands each message over untouched, so a
-- malformed one is rejected by the validation in cdc_events_mv with a reason;
-- 'stream' mode still routes any consumer-side error to dead_letters instead of
-- stopping consumption. Offsets are committed after the views ran: at least once.

CREATE TABLE IF NOT EXISTS revetl.cdc_kafka
(
    raw String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = {{kafka_brokers}},
    kafka_topic_list = {{source_topic_list}},
    kafka_group_name = {{consumer_group}},
    kafka_format = 'RawBLOB',
    kafka_num_consumers = 1,
    kafka_max_block_size = {{max_block_size}},
    kafka_flush_interval_ms = {{flush_interval_ms}},
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.cdc_kafka_mv TO revetl.cdc_landing AS
SELECT
    now64(3) AS received_at,
    toString(_topic) AS topic,
    toUInt64(_partition) AS `partition`,
    toUInt64(_offset) AS `offset`,
    if(length(_error) = 0, raw, _raw_message) AS raw,
    _error AS kafka_error
FROM revetl.cdc_kafka;
