-- Objects that earlier versions of the pipeline created and this one replaces,
-- dropped before anything is created so that they stop running. Without SYNC: on
-- chDB 3.7.2 a DROP ... SYNC of a Kafka table never returns.
--
-- revetl.ltv_kafka_sink: the Kafka-engine sink of the LTV changes, replaced by
-- the relay (relay_sink.sql). Left in place it would send every change twice.

DROP TABLE IF EXISTS revetl.ltv_kafka_sink_mv;

DROP TABLE IF EXISTS revetl.ltv_kafka_sink;
