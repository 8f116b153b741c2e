"""Wire the running servers into the pipeline: schemas, topics, connector."""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg

from connectors import debezium
from connectors.clickhouse_schema import PipelineParams, apply_pipeline
from services.config import Settings
from services.kafka import ensure_topics
from services.stack import Stack, StartResult, start_wave

log = logging.getLogger(__name__)


def pipeline_params(stack: Stack) -> PipelineParams:
    settings = stack.settings
    return PipelineParams(
        kafka_brokers=stack.kafka.bootstrap,
        users_topic=debezium.topic_for(debezium.USERS_TABLE),
        sales_topic=debezium.topic_for(debezium.SALES_TABLE),
        relay_url=stack.relay.ltv_url,
        consumer_group=settings.clickhouse_consumer_group,
        flush_interval_ms=settings.clickhouse_flush_interval_ms,
    )


def pipeline_topics(settings: Settings) -> list[str]:
    return [*(debezium.topic_for(t) for t in debezium.TABLES), settings.ltv_topic]


def prepare_storage(stack: Stack) -> None:
    """Everything that must exist before changes flow; idempotent."""
    from stream_app.target import apply_schema  # the worker owns the target schema

    debezium.apply_source_schema(stack.source_pg)
    with psycopg.connect(stack.target_pg.dsn(), autocommit=True) as conn:
        apply_schema(conn)
    created = ensure_topics(stack.kafka.bootstrap, pipeline_topics(stack.settings))
    if created:
        log.info("created topics=%s", ",".join(created))
    with stack.clickhouse.client() as client:
        apply_pipeline(client, pipeline_params(stack))


def bring_up(
    stack: Stack, timeout_s: float, on_ready: Callable[[StartResult], None]
) -> list[StartResult]:
    """Start every component and wire the pipeline between the waves."""
    storage, capture, stream = stack.waves()
    results = start_wave(storage, timeout_s, on_ready)
    prepare_storage(stack)
    results += start_wave(capture, timeout_s, on_ready)
    debezium.register(stack.settings, stack.connect, stack.source_pg, timeout_s)
    results += start_wave(stream, timeout_s, on_ready)
    return results
