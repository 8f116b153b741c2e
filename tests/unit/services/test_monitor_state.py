"""The monitor's pure parts: percentiles, freshness, snapshot to metrics and JSON."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.monitor_state import (
    SLOT_NOISE_BYTES,
    SLOT_STALL_S,
    ClickHouseConsumer,
    ComponentState,
    ConnectorTask,
    GroupLag,
    HistogramReading,
    LatencyWindow,
    PartitionLag,
    Pending,
    PipelineNames,
    SlotState,
    SlotTracker,
    Snapshot,
    WorkerState,
    bucket_delta,
    delivering,
    freshness_s,
    histogram_quantile,
    parse_worker_metrics,
    render_metrics,
    slot_pending,
    source_commit_ms,
    stages,
    state_json,
)
from stream_app.metrics import WorkerMetrics
from stream_app.target import BatchResult

NAMES = PipelineNames("ch-group", "worker-group", "revetl-source", "revetl")
INF = math.inf


def reading(*counts: float) -> HistogramReading:
    bounds = (0.1, 0.5, 1.0, INF)
    return HistogramReading(tuple(zip(bounds, counts, strict=True)))


# Percentiles -------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_the_rank_falls_in() -> None:
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (INF, 100.0)]

    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.99)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    buckets = [(0.1, 1.0), (1.0, 2.0), (INF, 10.0)]

    assert histogram_quantile(0.9, buckets) == 1.0


def test_quantile_of_an_empty_histogram_is_none() -> None:
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None


def test_bucket_delta_is_none_after_a_counter_reset() -> None:
    assert bucket_delta(reading(1, 2, 3, 4), reading(2, 4, 6, 8)) == (
        (0.1, 1), (0.5, 2), (1.0, 3), (INF, 4),
    )  # fmt: skip
    assert bucket_delta(reading(5, 5, 5, 5), reading(0, 1, 1, 1)) is None


def test_latency_window_covers_only_the_recent_observations() -> None:
    window = LatencyWindow(window_s=60.0)

    first = window.add(0.0, reading(0, 0, 0, 0))
    # 100 slow events early on, then 100 fast ones in the last minute.
    window.add(10.0, reading(0, 0, 0, 100))
    mixed = window.add(30.0, reading(100, 100, 100, 200))
    recent = window.add(80.0, reading(100, 100, 100, 200))

    assert first.count == 0 and first.p50 is None
    assert mixed.count == 200
    assert mixed.p99 == 1.0  # the slow half is above every finite bound
    assert recent.count == 100
    assert recent.p99 is not None and recent.p99 <= 0.1


def test_latency_window_starts_again_when_the_worker_restarts() -> None:
    window = LatencyWindow()
    window.add(0.0, reading(0, 0, 0, 50))
    window.add(1.0, reading(0, 0, 0, 80))

    after_restart = window.add(2.0, reading(0, 0, 0, 3))
    next_one = window.add(3.0, reading(4, 4, 4, 4))

    assert after_restart.count == 0
    assert next_one.count == 1 and next_one.p50 is not None and next_one.p50 < 0.1


def test_worker_metrics_text_parses_back_to_counters_and_buckets() -> None:
    metrics = WorkerMetrics()
    result = BatchResult(events=3, fresh=3, upserts=2, rank_changes=1)
    metrics.observe_batch(4, result, [0.07, 0.3, 0.3, 12.0])
    metrics.observe_retry()

    parsed = parse_worker_metrics(metrics.render().decode())

    assert parsed.counter("events") == 4
    assert parsed.counter("upserts") == 2
    assert parsed.counter("rank_changes") == 1
    assert parsed.counter("batches") == 1
    assert parsed.counter("retries") == 1
    assert parsed.counter("dead_letters") == 0
    buckets = dict(parsed.latency.buckets)
    assert (buckets[0.1], buckets[0.5], buckets[15.0], buckets[INF]) == (1, 3, 4, 4)


# Freshness ----------------------------------------------------------------------


def test_freshness_is_zero_when_nothing_waits() -> None:
    assert freshness_s(1000.0, []) == 0.0


def test_freshness_is_the_age_of_the_oldest_waiting_change() -> None:
    pending = [
        Pending("worker", 990.0, "revetl.ltv[0]"),
        Pending("clickhouse", 975.5, "oltp.public.sales[0]"),
    ]

    assert freshness_s(1000.0, pending) == pytest.approx(24.5)
    assert freshness_s(970.0, pending) == 0.0  # a commit "in the future" is now


def slot(lag: int | None, active: bool = True) -> SlotState:
    return SlotState("revetl", active, "reserved", lag, 1234)


def test_slot_within_the_heartbeat_noise_never_waits() -> None:
    assert slot_pending(slot(SLOT_NOISE_BYTES), False, 100.0, 500.0) is None
    assert slot_pending(slot(None), False, 100.0, 500.0) is None


def test_slot_waits_from_its_last_advance_when_debezium_does_not_deliver() -> None:
    held = SLOT_NOISE_BYTES + 1

    paused = slot_pending(slot(held), False, 100.0, 130.0)
    inactive = slot_pending(slot(held, active=False), True, 100.0, 130.0)
    delivering_now = slot_pending(slot(held), True, 100.0, 130.0)
    stalled = slot_pending(slot(held), True, 100.0, 100.0 + SLOT_STALL_S)

    assert paused == Pending("debezium", 100.0, "slot revetl")
    assert inactive is not None and inactive.committed_at_s == 100.0
    assert delivering_now is None
    assert stalled is not None


def test_slot_tracker_keeps_the_time_the_confirmed_position_last_moved() -> None:
    tracker = SlotTracker()
    moved = SlotState("revetl", True, "reserved", 10, 2000)

    first = tracker.advanced_at(slot(10), 100.0, first_seen_s=40.0)
    same = tracker.advanced_at(slot(99), 110.0)
    after_move = tracker.advanced_at(moved, 120.0)
    later = tracker.advanced_at(moved, 130.0)

    assert (first, same, after_move, later) == (40.0, 40.0, 120.0, 120.0)
    assert tracker.advanced_at(SlotState("new", True, "", 0, 1), 5.0) == 5.0


def test_a_connector_delivers_only_with_every_task_running() -> None:
    running = ConnectorTask("revetl-source", "connector", "RUNNING")
    task = ConnectorTask("revetl-source", "0", "RUNNING")
    paused = ConnectorTask("revetl-source", "0", "PAUSED")
    other = ConnectorTask("other", "0", "RUNNING")

    assert delivering([running, task, other], "revetl-source")
    assert not delivering([running, paused], "revetl-source")
    assert not delivering([running], "revetl-source")  # no task yet
    assert not delivering([other], "revetl-source")


def test_source_commit_time_is_read_from_both_message_kinds() -> None:
    ltv = {"user_id": 1, "ltv": 5, "source_lsn": 9, "source_ts_ms": 1_700_000_000_123}
    envelope = {
        "before": None,
        "after": {"id": 1},
        "source": {"ts_ms": 17},
        "ts_ms": 99,
    }

    assert source_commit_ms(json.dumps(ltv).encode()) == 1_700_000_000_123
    assert source_commit_ms(json.dumps(envelope).encode()) == 17
    assert source_commit_ms(json.dumps({"payload": envelope}).encode()) == 17
    assert source_commit_ms(b'{"__source_ts_ms": 5}') == 5
    assert source_commit_ms(b'{"source_ts_ms": true}') is None
    assert source_commit_ms(b"not json") is None
    assert source_commit_ms(b"[1, 2]") is None
    assert source_commit_ms(None) is None


# Snapshot views -------------------------------------------------------------------


def full_snapshot(worker_text: str) -> Snapshot:
    return Snapshot(
        time=1000.0,
        names=NAMES,
        groups=(
            GroupLag(
                "ch-group",
                1,
                (
                    PartitionLag("ch-group", "oltp.public.sales", 0, 90, 100),
                    PartitionLag("ch-group", "oltp.public.users", 0, 7, 7),
                ),
            ),
            GroupLag(
                "worker-group",
                0,
                (PartitionLag("worker-group", "revetl.ltv", 0, 40, 45),),
            ),
        ),
        slots=(SlotState("revetl", False, "extended", 123_456, 99),),
        connectors=(
            ConnectorTask("revetl-source", "connector", "RUNNING"),
            ConnectorTask("revetl-source", "0", "FAILED"),
        ),
        clickhouse_consumers=(
            ClickHouseConsumer("revetl.cdc_kafka", 1.5, 1000, 2),
            ClickHouseConsumer("revetl.other", None, 0, 0),
        ),
        dead_letters_clickhouse=3,
        dead_letters_worker=4,
        worker=WorkerState(
            up=True,
            metrics_text=worker_text,
            reading=parse_worker_metrics(worker_text),
        ),
        freshness_seconds=12.5,
        pending=(Pending("worker", 988.0, "revetl.ltv[0]"),),
        components=(
            ComponentState("kafka", "healthy", True, ""),
            ComponentState("worker", "stopped", False, ""),
        ),
        errors=("connect: down",),
        errors_total=(("connect", 2), ("kafka", 0)),
        collect_seconds=0.25,
    )


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_snapshot_becomes_every_metric_with_its_labels() -> None:
    worker = WorkerMetrics()
    worker.observe_batch(5, BatchResult(events=5, fresh=5, upserts=5), [0.2] * 5)

    got = samples(render_metrics(full_snapshot(worker.render().decode())))

    lag = "revetl_consumer_lag_messages"
    assert got[(lag, (("group", "ch-group"), ("partition", "0"),
                      ("topic", "oltp.public.sales")))] == 10  # fmt: skip
    assert got[(lag, (("group", "worker-group"), ("partition", "0"),
                      ("topic", "revetl.ltv")))] == 5  # fmt: skip
    assert got[("revetl_consumer_group_members", (("group", "worker-group"),))] == 0
    assert got[("revetl_replication_slot_lag_bytes", (("slot", "revetl"),))] == 123_456
    assert got[("revetl_replication_slot_active", (("slot", "revetl"),))] == 0
    status = "revetl_replication_slot_wal_status"
    assert got[(status, (("slot", "revetl"), ("status", "extended")))] == 1
    assert got[(status, (("slot", "revetl"), ("status", "reserved")))] == 0
    up = "revetl_connector_up"
    assert got[(up, (("connector", "revetl-source"), ("task", "connector")))] == 1
    assert got[(up, (("connector", "revetl-source"), ("task", "0")))] == 0
    age = "revetl_clickhouse_consumer_last_poll_age_seconds"
    assert got[(age, (("table", "revetl.cdc_kafka"),))] == 1.5
    assert got[(age, (("table", "revetl.other"),))] == INF
    table = (("table", "revetl.cdc_kafka"),)
    assert got[("revetl_clickhouse_consumer_messages_read", table)] == 1000
    assert got[("revetl_clickhouse_consumer_exceptions", table)] == 2
    assert got[("revetl_dead_letters", (("stage", "clickhouse"),))] == 3
    assert got[("revetl_dead_letters", (("stage", "worker"),))] == 4
    assert got[("revetl_worker_up", ())] == 1
    assert got[("revetl_worker_upserts_total", ())] == 5
    assert got[("revetl_end_to_end_latency_seconds_count", ())] == 5
    assert got[("revetl_freshness_seconds", ())] == 12.5
    assert got[("revetl_component_up", (("component", "worker"),))] == 0
    assert got[("revetl_monitor_collect_seconds", ())] == 0.25
    assert got[("revetl_monitor_errors_total", (("source", "connect"),))] == 2


def test_unknown_parts_leave_their_samples_out_and_the_worker_down() -> None:
    snapshot = Snapshot(time=5.0, names=NAMES, errors=("kafka: down",))

    got = samples(render_metrics(snapshot))
    names = {name for name, _ in got}

    assert got[("revetl_worker_up", ())] == 0
    assert "revetl_freshness_seconds" not in names
    assert "revetl_consumer_lag_messages" not in names
    assert not any(n.startswith("revetl_worker_events") for n in names)


def test_state_json_has_the_page_contract() -> None:
    worker = WorkerMetrics()
    worker.observe_batch(2, BatchResult(events=2, fresh=2, upserts=1), [0.2, 0.3])

    state = json.loads(json.dumps(state_json(full_snapshot(worker.render().decode()))))

    assert set(state) >= {
        "time", "freshness_seconds", "stages", "connectors", "clickhouse_consumers",
        "worker", "dead_letters", "components", "errors",
    }  # fmt: skip
    assert [(s["name"], s["lag"], s["unit"]) for s in state["stages"]] == [
        ("debezium", 123_456, "bytes"),
        ("clickhouse", 10, "messages"),
        ("worker", 5, "messages"),
    ]
    assert "oldest waiting 12.0 s" in state["stages"][2]["detail"]
    assert state["connectors"][1] == {
        "connector": "revetl-source", "task": "0", "state": "FAILED", "up": False,
    }  # fmt: skip
    assert state["clickhouse_consumers"][1]["last_poll_age_seconds"] is None
    assert state["worker"]["events"] == 2 and state["worker"]["upserts"] == 1
    assert state["worker"]["latency_seconds"] == {
        "p50": None, "p95": None, "p99": None, "count": 0,
    }  # fmt: skip
    assert state["dead_letters"] == {"clickhouse": 3, "worker": 4}
    assert state["components"][1] == {
        "name": "worker", "state": "stopped", "healthy": False, "detail": "",
    }  # fmt: skip
    assert state["errors"] == ["connect: down"]


def test_stages_say_when_their_source_is_unknown() -> None:
    rows = stages(Snapshot(time=0.0, names=NAMES))

    assert [(s.name, s.lag) for s in rows] == [
        ("debezium", None), ("clickhouse", None), ("worker", None),
    ]  # fmt: skip
    assert "unknown" in rows[0].detail
