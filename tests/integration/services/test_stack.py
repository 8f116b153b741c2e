"""The stack's servers run, answer, and are wired together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Producer
from psycopg import sql

from services import process
from services.config import Settings
from services.connect import DEBEZIUM_POSTGRES
from services.health import State
from services.stack import Stack, down, status
from services.wiring import bring_up

EVENT_TIMEOUT_S = 90.0


def revetl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def our_processes(state_dir: Path) -> list[str]:
    """Command lines of live processes that belong to this state directory."""
    marker = str(state_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmdline = process.command_line(int(entry.name))
        if cmdline and marker in cmdline:
            found.append(cmdline)
    return found


def test_every_component_is_healthy(stack: Stack) -> None:
    rows = status(stack)

    assert [r.name for r in rows] == [
        "source-pg", "target-pg", "kafka", "clickhouse", "relay", "connect",
        "worker", "monitor",
    ]  # fmt: skip
    unhealthy = [(r.name, r.state.value, r.detail) for r in rows if not r.healthy]
    assert unhealthy == []
    assert all(r.version for r in rows)


def test_status_json_hides_the_password(stack: Stack, settings: Settings) -> None:
    result = revetl("status", "--json")

    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["name"] for r in rows} >= {"kafka", "connect", "clickhouse"}
    assert all(r["healthy"] for r in rows)
    secret = settings.pg_password.get_secret_value()
    assert f":{secret}@" not in result.stdout
    assert "password" not in result.stdout


def test_source_is_ready_for_logical_decoding(
    source_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    row = source_conn.execute("SHOW wal_level").fetchone()

    assert row == ("logical",)


def test_source_insert_becomes_a_debezium_event_on_kafka(
    stack: Stack, source_conn: psycopg.Connection[tuple[object, ...]], unique: str
) -> None:
    table = f"it_stack_{unique}"
    source_conn.execute(
        sql.SQL("CREATE TABLE {} (id BIGINT PRIMARY KEY, note TEXT)").format(
            sql.Identifier(table)
        )
    )
    name = f"it-stack-{unique}"
    config = {
        "connector.class": DEBEZIUM_POSTGRES,
        "plugin.name": "pgoutput",
        "database.hostname": stack.settings.bind_host,
        "database.port": str(stack.settings.source_pg_port),
        "database.user": stack.settings.pg_user,
        "database.password": stack.settings.pg_password.get_secret_value(),
        "database.dbname": stack.settings.source_pg_database,
        "topic.prefix": f"it{unique}",
        "table.include.list": f"public.{table}",
        "slot.name": f"it_{unique}",
        "slot.drop.on.stop": "true",
        "publication.name": f"it_{unique}",
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "no_data",
    }
    stack.connect.request("PUT", f"/connectors/{name}/config", config)
    try:
        _wait_connector_running(stack, name)
        source_conn.execute(
            sql.SQL("INSERT INTO {} VALUES (42, 'hello')").format(sql.Identifier(table))
        )
        event = _first_message(stack, f"it{unique}.public.{table}")
    finally:
        stack.connect.request("DELETE", f"/connectors/{name}")

    assert event["op"] == "c"
    assert event["after"] == {"id": 42, "note": "hello"}
    assert event["source"]["table"] == table
    assert event["source"]["lsn"] > 0


def _wait_connector_running(stack: Stack, name: str) -> None:
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    state = None
    while time.monotonic() < deadline:
        try:
            state = stack.connect.request("GET", f"/connectors/{name}/status")
        except Exception:  # not registered yet: Connect answers 404 for a while
            state = None
        tasks = [] if state is None else state.get("tasks", [])
        if tasks and all(t["state"] == "RUNNING" for t in tasks):
            return
        if any(t["state"] == "FAILED" for t in tasks):
            pytest.fail(f"connector failed: {tasks}")
        time.sleep(0.5)
    pytest.fail(f"connector {name} not running after {EVENT_TIMEOUT_S} s: {state}")


def _first_message(stack: Stack, topic: str) -> dict[str, object]:
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka.bootstrap,
            "group.id": f"it-{topic}",
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            value = msg.value()
            assert value is not None
            decoded: dict[str, object] = json.loads(value)
            return decoded
    finally:
        consumer.close()
    pytest.fail(f"no message on {topic} within {EVENT_TIMEOUT_S} s")


def test_clickhouse_kafka_engine_ingests_json_from_a_topic(
    stack: Stack, clickhouse: Client, unique: str
) -> None:
    db, topic = f"it_{unique}", f"it-ch-{unique}"
    producer = Producer({"bootstrap.servers": stack.kafka.bootstrap})
    for i in range(100):
        producer.produce(topic, json.dumps({"id": i, "amount": i * 10}).encode())
    assert producer.flush(30) == 0

    clickhouse.command(f"CREATE DATABASE {db}")
    try:
        clickhouse.command(
            f"CREATE TABLE {db}.queue (id UInt64, amount Int64) ENGINE = Kafka "
            "SETTINGS kafka_broker_list = %(broker)s, "
            "kafka_topic_list = %(topic)s, kafka_group_name = %(group)s, "
            "kafka_format = 'JSONEachRow', kafka_flush_interval_ms = 200",
            parameters={
                "broker": stack.kafka.bootstrap,
                "topic": topic,
                "group": f"it-ch-{unique}",
            },
        )
        clickhouse.command(
            f"CREATE TABLE {db}.sales (id UInt64, amount Int64) "
            "ENGINE = MergeTree ORDER BY id"
        )
        clickhouse.command(
            f"CREATE MATERIALIZED VIEW {db}.mv TO {db}.sales "
            f"AS SELECT id, amount FROM {db}.queue"
        )
        rows = _wait_rows(
            clickhouse,
            f"SELECT count(), sum(amount) FROM {db}.sales",
            expected_count=100,
        )
    finally:
        _drop_kafka_database(clickhouse, db)

    assert rows == (100, sum(i * 10 for i in range(100)))


def _wait_rows(client: Client, query: str, expected_count: int) -> tuple[int, int]:
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    row: tuple[int, int] = (0, 0)
    while time.monotonic() < deadline:
        result = client.query(query).result_rows[0]
        row = (int(result[0]), int(result[1]))
        if row[0] >= expected_count:
            return row
        time.sleep(0.5)
    return row


def test_down_leaves_no_process_and_up_brings_it_back(
    stack: Stack, settings: Settings
) -> None:
    down(stack)
    left = our_processes(settings.state_dir)
    bring_up(stack, 180.0, lambda result: None)

    assert left == []
    assert all(row.healthy for row in status(stack))


def _drop_kafka_database(client: Client, db: str) -> None:
    # chDB 3.7.2 never returns from DROP ... SYNC once a Kafka table has consumed,
    # so views and queues are dropped one by one, without SYNC.
    client.command(f"DROP TABLE IF EXISTS {db}.mv")
    client.command(f"DROP TABLE IF EXISTS {db}.queue")
    client.command(f"DROP DATABASE IF EXISTS {db}")


@pytest.mark.faults
def test_a_killed_component_shows_dead_and_up_restarts_it(stack: Stack) -> None:
    worker = stack.worker
    pid = worker.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    process.wait_gone(pid, worker.spec().marker, 30.0)

    dead = worker.status()
    bring_up(stack, 180.0, lambda result: None)
    revived = worker.status()

    assert dead.state is State.DEAD
    assert revived.healthy
    assert revived.pid not in (None, pid)
