"""Prometheus metrics of the stream worker: what it applied, and how late."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from stream_app.events import LtvEvent
from stream_app.target import BatchResult

LATENCY_BUCKETS_S = (
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds, in seconds, of the end-to-end latency histogram: fine steps
around the one-second goal, coarse ones up to a minute of backlog."""

LATENCY_HELP = (
    "Seconds from the source commit of a change (source_ts_ms of its LTV message) "
    "to the commit of the target transaction that applied it; one observation per "
    "LTV message in a committed batch, stale ones included."
)


def end_to_end_latencies_s(
    events: Sequence[LtvEvent], committed_at_s: float
) -> list[float]:
    """Source commit to target commit of each event, in seconds, never negative.

    `committed_at_s` is the epoch time the target transaction committed; the
    source commit time comes from the event. Clocks of one machine agree, so a
    negative difference is rounding and counts as zero.
    """
    return [max(0.0, committed_at_s - e.source_ts_ms / 1000) for e in events]


class WorkerMetrics:
    """The worker's counters and latency histogram, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "revetl_worker_events", "LTV messages taken from Kafka.", registry=r
        )
        self.upserts = Counter(
            "revetl_worker_upserts",
            "Users whose row in user_ltv_history was inserted or updated.",
            registry=r,
        )
        self.rank_changes = Counter(
            "revetl_worker_rank_changes",
            "Class transitions appended to rank_changes.",
            registry=r,
        )
        self.dead_letters = Counter(
            "revetl_worker_dead_letters",
            "LTV messages the worker could not read, written to dead_letters.",
            registry=r,
        )
        self.batches = Counter(
            "revetl_worker_batches",
            "Target transactions committed, one per batch.",
            registry=r,
        )
        self.retries = Counter(
            "revetl_worker_retries",
            "Failed target writes that were retried.",
            registry=r,
        )
        self.latency = Histogram(
            "revetl_end_to_end_latency_seconds",
            LATENCY_HELP,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    def observe_batch(
        self, messages: int, result: BatchResult, latencies_s: Iterable[float]
    ) -> None:
        """Count one committed batch and observe its events' latencies."""
        self.events.inc(messages)
        self.batches.inc()
        self.upserts.inc(result.upserts)
        self.rank_changes.inc(result.rank_changes)
        self.dead_letters.inc(result.dead_letters)
        for seconds in latencies_s:
            self.latency.observe(seconds)

    def observe_retry(self) -> None:
        self.retries.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
