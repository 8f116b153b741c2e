"""The monitor on the live stack: every metric family, and lag and freshness that
rise while a stage is stopped and return to zero once it runs again."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from pipeline_support import Pipeline, next_id
from prometheus_client.parser import text_string_to_metric_families

from connectors import debezium
from services.config import load_settings
from services.kafka import admin_client
from services.monitor_collect import PEEK_GROUP, Collector
from services.monitor_state import SLOT_NOISE_BYTES, render_metrics
from services.stack import Stack

WAIT_S = 180.0
START_TIMEOUT_S = 180.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

FAMILIES = {
    "revetl_consumer_lag_messages", "revetl_consumer_group_members",
    "revetl_replication_slot_lag_bytes", "revetl_replication_slot_active",
    "revetl_replication_slot_wal_status", "revetl_connector_up",
    "revetl_clickhouse_consumer_last_poll_age_seconds",
    "revetl_clickhouse_consumer_messages_read",
    "revetl_clickhouse_consumer_exceptions", "revetl_dead_letters",
    "revetl_worker_events_total", "revetl_worker_upserts_total",
    "revetl_worker_rank_changes_total", "revetl_worker_dead_letters_total",
    "revetl_worker_batches_total", "revetl_worker_retries_total",
    "revetl_end_to_end_latency_seconds_bucket",
    "revetl_end_to_end_latency_seconds_count", "revetl_worker_up",
    "revetl_freshness_seconds", "revetl_component_up",
    "revetl_monitor_collect_seconds", "revetl_monitor_errors_total",
}  # fmt: skip
"""Sample names one scrape of a healthy stack must carry."""

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def pipeline(stack: Stack) -> Iterator[Pipeline]:
    p = Pipeline(stack)
    yield p
    p.close()


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(stack: Stack) -> Samples:
    with _http.open(stack.monitor.url + "/metrics", timeout=10) as resp:
        return parse(resp.read().decode())


def wait_scrape(
    stack: Stack, done: Callable[[Samples], bool], timeout_s: float = WAIT_S
) -> Samples:
    """Scrape until done(samples) holds, after at least one collection made since
    the call; return the last scrape either way."""
    since = time.time()
    deadline = time.monotonic() + timeout_s
    while True:
        health = stack.monitor.get_json("/healthz", timeout_s=10)
        samples = scrape(stack)
        if (health["time"] > since and done(samples)) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def worker_lag(stack: Stack, samples: Samples) -> float:
    s = stack.settings
    labels = {"group": s.worker_group, "topic": s.ltv_topic, "partition": "0"}
    return value(samples, "revetl_consumer_lag_messages", **labels) or 0.0


def freshness(samples: Samples) -> float:
    found = value(samples, "revetl_freshness_seconds")
    return -1.0 if found is None else found


def slot_lag(samples: Samples) -> float:
    found = value(samples, "revetl_replication_slot_lag_bytes", slot=debezium.SLOT_NAME)
    return -1.0 if found is None else found


def latency_count(samples: Samples) -> float:
    return value(samples, "revetl_end_to_end_latency_seconds_count") or 0.0


def connector_up(samples: Samples, task: str) -> float | None:
    name = debezium.CONNECTOR_NAME
    return value(samples, "revetl_connector_up", connector=name, task=task)


def test_one_scrape_carries_every_family(stack: Stack) -> None:
    samples = wait_scrape(stack, lambda s: value(s, "revetl_worker_up") == 1)

    names = {name for name, _ in samples}
    groups = {
        dict(labels)["group"]
        for name, labels in samples
        if name == "revetl_consumer_lag_messages"
    }
    components = {
        dict(labels)["component"]: v
        for (name, labels), v in samples.items()
        if name == "revetl_component_up"
    }
    settings = stack.settings
    assert FAMILIES - names == set()
    assert {settings.clickhouse_consumer_group, settings.worker_group} <= groups
    assert components == {c.name: 1.0 for c in stack.components()}
    assert connector_up(samples, "connector") == 1
    assert value(samples, "revetl_dead_letters", stage="clickhouse") is not None
    assert value(samples, "revetl_dead_letters", stage="worker") is not None
    table = "revetl.cdc_kafka"  # the sink table ltv_kafka_sink is not a consumer
    consumers = {
        dict(labels)["table"]
        for name, labels in samples
        if name == "revetl_clickhouse_consumer_messages_read"
    }
    assert consumers == {table}
    age = value(
        samples, "revetl_clickhouse_consumer_last_poll_age_seconds", table=table
    )
    assert age is not None and math.isfinite(age)  # it has polled


def test_state_and_page_are_served(stack: Stack) -> None:
    state = stack.monitor.get_json("/api/state", timeout_s=10)
    with _http.open(stack.monitor.url + "/", timeout=10) as resp:
        page = resp.read()

    assert [s["name"] for s in state["stages"]] == ["debezium", "clickhouse", "worker"]
    assert {c["name"] for c in state["components"]} == {
        c.name for c in stack.components()
    }
    assert set(state["worker"]["latency_seconds"]) == {"p50", "p95", "p99", "count"}
    assert b"<html" in page.lower()


@pytest.mark.faults
def test_stopped_worker_lag_and_freshness_rise_then_return_to_zero(
    stack: Stack, pipeline: Pipeline
) -> None:
    worker = stack.worker
    worker.stop()
    try:
        user = pipeline.add_user()
        for amount in (1_000, 2_000, 3_000):
            pipeline.add_sale(user, amount)
        lagging = wait_scrape(
            stack, lambda s: worker_lag(stack, s) > 0 and freshness(s) > 0
        )
        grown = wait_scrape(stack, lambda s: freshness(s) > freshness(lagging))
        groups = admin_client(stack.kafka.bootstrap).list_consumer_groups()
        group_ids = {g.group_id for g in groups.result(timeout=30).valid}
    finally:
        worker.start()
        worker.wait_healthy(START_TIMEOUT_S)
    drained = wait_scrape(
        stack, lambda s: worker_lag(stack, s) == 0 and freshness(s) == 0
    )

    assert worker_lag(stack, lagging) > 0 and freshness(lagging) > 0
    assert freshness(grown) > freshness(lagging)
    assert value(grown, "revetl_worker_up") == 0
    members = value(
        grown, "revetl_consumer_group_members", group=worker.settings.worker_group
    )
    assert members == 0  # the monitor read the group without joining it
    assert PEEK_GROUP not in group_ids
    assert (worker_lag(stack, drained), freshness(drained)) == (0, 0)
    assert pipeline.wait_rank(user, 6_000) is not None
    # The restarted worker applied the backlog: each waiting message's latency
    # runs from its source commit, so it is at least the freshness seen before.
    applied = wait_scrape(stack, lambda s: latency_count(s) >= 1)
    assert (value(applied, "revetl_worker_events_total") or 0) >= 1
    latency_sum = value(applied, "revetl_end_to_end_latency_seconds_sum") or 0
    assert latency_sum >= freshness(grown)


@pytest.mark.faults
def test_paused_connector_shows_down_and_holds_wal_until_resumed(
    stack: Stack, pipeline: Pipeline
) -> None:
    path = f"/connectors/{debezium.CONNECTOR_NAME}"
    stack.connect.request("PUT", path + "/pause")
    try:
        paused = wait_scrape(stack, lambda s: connector_up(s, "0") == 0)
        user = pipeline.add_user()
        sales = 600  # about 160 KB of WAL, well past the slot's noise threshold
        with pipeline.source.cursor() as cur:
            cur.executemany(
                "INSERT INTO public.sales (id, user_id, branch, amount) "
                "VALUES (%s, %s, 1, 1000)",
                [(next_id(), user) for _ in range(sales)],
            )
        held = wait_scrape(
            stack,
            lambda s: (
                slot_lag(s) > slot_lag(paused) + SLOT_NOISE_BYTES and freshness(s) > 0
            ),
        )
    finally:
        stack.connect.request("PUT", path + "/resume")
    recovered = wait_scrape(
        stack,
        lambda s: (
            connector_up(s, "0") == 1
            and slot_lag(s) <= SLOT_NOISE_BYTES
            and freshness(s) == 0
        ),
    )

    assert connector_up(paused, "connector") == 0
    assert slot_lag(held) > slot_lag(paused) + SLOT_NOISE_BYTES
    assert freshness(held) > 0
    assert connector_up(recovered, "connector") == 1
    assert 0 <= slot_lag(recovered) <= SLOT_NOISE_BYTES
    assert freshness(recovered) == 0
    assert pipeline.wait_rank(user, 1_000 * sales) is not None


def test_a_failing_source_is_reported_and_the_others_still_read(
    stack: Stack,
) -> None:
    unreachable = free_port()
    broken = load_settings(connect_url=f"http://127.0.0.1:{unreachable}")
    collector = Collector(Stack.from_settings(broken))
    try:
        snapshot = collector.collect()
    finally:
        collector.close()
    samples = parse(render_metrics(snapshot).decode())

    assert [e.split(":")[0] for e in snapshot.errors] == ["connect"]
    assert dict(snapshot.errors_total)["connect"] == 1
    assert [c.state for c in snapshot.connectors] == ["UNREACHABLE"]
    assert connector_up(samples, "connector") == 0
    assert snapshot.groups is not None and snapshot.slots is not None
    assert snapshot.clickhouse_consumers and snapshot.freshness_seconds is not None
    assert value(samples, "revetl_worker_up") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def revetl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **env},
    )


def test_lag_prints_the_monitors_state_or_collects_it_itself(stack: Stack) -> None:
    as_json = revetl("lag", "--json")
    alone = revetl("lag", REVETL_MONITOR_PORT=str(free_port()))

    assert as_json.returncode == 0, as_json.stderr
    state = json.loads(as_json.stdout)
    assert {"freshness_seconds", "stages", "connectors", "worker"} <= set(state)
    assert alone.returncode == 0, alone.stderr
    assert "collected in this process" in alone.stdout
    assert "lag per stage" in alone.stdout and "clickhouse" in alone.stdout
