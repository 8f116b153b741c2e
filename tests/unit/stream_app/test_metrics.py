"""The worker's Prometheus metrics: latencies per event, counters per batch."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.events import LtvEvent
from stream_app.metrics import LATENCY_BUCKETS_S, WorkerMetrics, end_to_end_latencies_s
from stream_app.target import BatchResult


def event(source_ts_ms: int) -> LtvEvent:
    return LtvEvent(
        user_id=1,
        ltv=100,
        sale_count=1,
        source_lsn=10,
        source_ts_ms=source_ts_ms,
        user_deleted=False,
    )


def values(metrics: WorkerMetrics) -> dict[str, float]:
    """Sample values by name, a bucket's as name{le=bound}."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            le = sample.labels.get("le")
            found[sample.name + ("" if le is None else f"{{le={le}}}")] = sample.value
    return found


def test_latency_is_target_commit_minus_source_commit_per_event() -> None:
    latencies = end_to_end_latencies_s(
        [event(1_000_000), event(1_000_750), event(1_002_500)], 1_003.0
    )

    assert latencies == pytest.approx([3.0, 2.25, 0.5])


def test_a_source_commit_after_the_target_commit_counts_as_zero() -> None:
    assert end_to_end_latencies_s([event(5_001)], 5.0) == [0.0]


def test_buckets_span_fifty_milliseconds_to_a_minute() -> None:
    assert LATENCY_BUCKETS_S[0] == 0.05 and LATENCY_BUCKETS_S[-1] == 60.0
    assert list(LATENCY_BUCKETS_S) == sorted(LATENCY_BUCKETS_S)
    assert 1.0 in LATENCY_BUCKETS_S


def test_every_batch_adds_to_the_counters_and_the_histogram() -> None:
    metrics = WorkerMetrics()
    first = BatchResult(events=3, fresh=2, upserts=2, rank_changes=1, dead_letters=1)
    second = BatchResult(events=1, fresh=1, upserts=1)

    metrics.observe_batch(4, first, [0.04, 0.8, 2.0])
    metrics.observe_batch(1, second, [90.0])
    metrics.observe_retry()
    got = values(metrics)

    assert got["revetl_worker_events_total"] == 5
    assert got["revetl_worker_batches_total"] == 2
    assert got["revetl_worker_upserts_total"] == 3
    assert got["revetl_worker_rank_changes_total"] == 1
    assert got["revetl_worker_dead_letters_total"] == 1
    assert got["revetl_worker_retries_total"] == 1
    assert got["revetl_end_to_end_latency_seconds_count"] == 4
    assert got["revetl_end_to_end_latency_seconds_sum"] == pytest.approx(92.84)
    assert got["revetl_end_to_end_latency_seconds_bucket{le=0.05}"] == 1
    assert got["revetl_end_to_end_latency_seconds_bucket{le=1.0}"] == 2
    assert got["revetl_end_to_end_latency_seconds_bucket{le=60.0}"] == 3
    assert got["revetl_end_to_end_latency_seconds_bucket{le=+Inf}"] == 4


def test_two_workers_in_one_process_keep_their_own_counts() -> None:
    one, two = WorkerMetrics(), WorkerMetrics()

    one.observe_retry()

    assert values(one)["revetl_worker_retries_total"] == 1
    assert values(two)["revetl_worker_retries_total"] == 0
