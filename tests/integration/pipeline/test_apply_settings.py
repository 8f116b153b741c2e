"""Applying the ClickHouse pipeline again with other settings on the live stack."""

from __future__ import annotations

import dataclasses

import pytest
from clickhouse_connect.driver.client import Client
from pipeline_support import Pipeline

from connectors.clickhouse_schema import apply_pipeline
from services.stack import Stack
from services.wiring import pipeline_params


def engines(client: Client) -> dict[str, tuple[str, str]]:
    rows = client.query(
        "SELECT name, engine_full, toString(uuid) FROM system.tables "
        "WHERE database = 'revetl' AND name IN ('cdc_kafka', 'ltv_relay_sink')"
    ).result_rows
    return {str(name): (str(engine), str(uuid)) for name, engine, uuid in rows}


@pytest.mark.faults
def test_a_new_flush_interval_recreates_the_kafka_table_and_loses_no_sale(
    stack: Stack, pipeline: Pipeline
) -> None:
    params = pipeline_params(stack)
    interval = params.flush_interval_ms + 25
    slower = dataclasses.replace(params, flush_interval_ms=interval)
    user = pipeline.add_user()
    with stack.clickhouse.client() as client:
        before = engines(client)
        apply_pipeline(client, params)
        unchanged = engines(client)
        try:
            apply_pipeline(client, slower)
            changed = engines(client)
            pipeline.add_sale(user, 1_200_000)
            arrived = pipeline.wait_rank(user, 1_200_000)
        finally:
            apply_pipeline(client, params)
        restored = engines(client)

    assert unchanged == before  # same settings: nothing is dropped
    assert f"kafka_flush_interval_ms = {interval}," in changed["cdc_kafka"][0]
    assert changed["cdc_kafka"][1] != before["cdc_kafka"][1]
    assert changed["ltv_relay_sink"] == before["ltv_relay_sink"]
    assert arrived == (1_200_000, "B", 5)
    assert restored["cdc_kafka"][0] == before["cdc_kafka"][0]
    report = pipeline.reconcile()
    assert report.agrees, (report.summary(), report.differences[:5])
