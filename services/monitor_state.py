"""The monitor's snapshot of the pipeline, and what follows from it (no I/O).

Freshness
---------
`revetl_freshness_seconds` is the age of the oldest change committed in the source
database that the product DB does not hold yet: now minus the source commit time
of that change, and 0 when nothing is waiting. A change waits in one of three
places, one per stage of the pipeline:

1. debezium: WAL the replication slot holds that Debezium has not delivered to
   Kafka. The slot counts as waiting only when it holds more than
   `SLOT_NOISE_BYTES` past its confirmed position (less is heartbeat and
   checkpoint records, not sales) and Debezium is not delivering: the connector
   or its task is not RUNNING, Connect does not answer, the slot is inactive, or
   its confirmed position has not moved for `SLOT_STALL_S`. Postgres does not say
   when that WAL was written, so the time counted from is when the slot's
   confirmed position last advanced (as the monitor saw it; a monitor that
   starts while Debezium is down counts from Debezium's last heartbeat). While
   Debezium delivers, what it has read but not confirmed yet is already on Kafka
   and counted by the next stage.
2. clickhouse: Debezium topic partitions whose ClickHouse consumer group has
   committed below the high watermark. The message at the committed offset is
   the oldest waiting one; its source commit time is `source.ts_ms` of the
   Debezium envelope.
3. worker: partitions of the LTV topic the worker's group has committed below
   the high watermark; the waiting message's `source_ts_ms` is used.

A message whose source commit time cannot be read counts from its Kafka
timestamp (when it was produced, so later than the commit). Committed offsets
trail the work (the worker commits every `REVETL_WORKER_COMMIT_INTERVAL_S`), so
for about a second after the last change reached the product DB freshness may
still show its age. An LTV message carries the commit time of the newest change
of its user in a ClickHouse block, so an older change of the same block is
counted from that newer time. Freshness is unknown (no sample, `null` in the
JSON) while Kafka cannot be read.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SLOT_NOISE_BYTES = 64 * 1024
"""WAL a slot may hold without counting as waiting. Debezium's heartbeat and
Postgres's own records add a few hundred bytes at a time; one sale adds about
300, so this hides up to ~200 sales held by a stopped connector."""

SLOT_STALL_S = 60.0
"""A slot whose confirmed position has not moved this long, while it holds more
than the noise, counts as waiting even if the connector says RUNNING. Debezium
confirms every second under load and every heartbeat (10 s) when idle."""

LATENCY_WINDOW_S = 60.0
"""Latency percentiles cover the worker's histogram over about this long."""

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
"""pg_replication_slots.wal_status values; each gets a 0/1 series."""

STAGES = ("debezium", "clickhouse", "worker")

SOURCES = (
    "kafka", "source-pg", "connect", "clickhouse", "target-pg", "worker",
    "components", "freshness",
)  # fmt: skip
"""What the monitor collects from, one error counter each."""

WORKER_COUNTERS = (
    "events", "upserts", "rank_changes", "dead_letters", "batches", "retries",
)  # fmt: skip
LATENCY_FAMILY = "revetl_end_to_end_latency_seconds"


@dataclass(frozen=True)
class PipelineNames:
    """The names the pipeline's parts go by, from the settings."""

    clickhouse_group: str
    worker_group: str
    connector: str
    slot: str


@dataclass(frozen=True)
class PartitionLag:
    """One partition as a consumer group sees it."""

    group: str
    topic: str
    partition: int
    position: int
    """The committed offset, or the low watermark when the group never committed."""
    end: int
    """The high watermark: the offset the next message will get."""

    @property
    def lag(self) -> int:
        return max(0, self.end - self.position)


@dataclass(frozen=True)
class GroupLag:
    group: str
    members: int | None
    """None when Kafka could not describe the group (Connect's own, say)."""
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class SlotState:
    slot: str
    active: bool
    wal_status: str
    lag_bytes: int | None
    """WAL between the current position and the slot's confirmed position;
    None once the slot is lost."""
    confirmed_lsn: int | None


@dataclass(frozen=True)
class ConnectorTask:
    connector: str
    task: str
    """"connector" for the connector itself, else the task id."""
    state: str

    @property
    def up(self) -> bool:
        return self.state == "RUNNING"


@dataclass(frozen=True)
class ClickHouseConsumer:
    table: str
    last_poll_age_seconds: float | None
    """None when it never polled."""
    messages_read: int
    exceptions: int


@dataclass(frozen=True)
class LatencySummary:
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    count: int = 0


@dataclass(frozen=True)
class HistogramReading:
    """A cumulative histogram: (upper bound, count) pairs ending at +Inf."""

    buckets: tuple[tuple[float, float], ...]

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0


@dataclass(frozen=True)
class WorkerReading:
    """What one scrape of the worker's /metrics says."""

    counters: tuple[tuple[str, float], ...]
    latency: HistogramReading

    def counter(self, name: str) -> int | None:
        value = dict(self.counters).get(name)
        return None if value is None else int(value)


@dataclass(frozen=True)
class WorkerState:
    up: bool
    metrics_text: str = ""
    reading: WorkerReading | None = None
    latency: LatencySummary = field(default_factory=LatencySummary)


@dataclass(frozen=True)
class ComponentState:
    name: str
    state: str
    healthy: bool
    detail: str


@dataclass(frozen=True)
class Pending:
    """The oldest change waiting at one stage, and when it was committed."""

    stage: str
    committed_at_s: float
    where: str
    """The partition or slot it waits in, for the detail text."""


@dataclass(frozen=True)
class Snapshot:
    """Everything one collection saw. Immutable: handlers share it without locks.

    A part whose source failed is None (or empty) and its error is in `errors`.
    """

    time: float
    names: PipelineNames
    groups: tuple[GroupLag, ...] | None = None
    slots: tuple[SlotState, ...] | None = None
    connectors: tuple[ConnectorTask, ...] = ()
    clickhouse_consumers: tuple[ClickHouseConsumer, ...] | None = None
    dead_letters_clickhouse: int | None = None
    dead_letters_worker: int | None = None
    worker: WorkerState = field(default_factory=lambda: WorkerState(up=False))
    freshness_seconds: float | None = None
    pending: tuple[Pending, ...] = ()
    components: tuple[ComponentState, ...] = ()
    errors: tuple[str, ...] = ()
    errors_total: tuple[tuple[str, int], ...] = ()
    collect_seconds: float = 0.0

    def group(self, name: str) -> GroupLag | None:
        for group in self.groups or ():
            if group.group == name:
                return group
        return None

    def slot(self, name: str) -> SlotState | None:
        for slot in self.slots or ():
            if slot.slot == name:
                return slot
        return None


@dataclass(frozen=True)
class Stage:
    """One row of the lag table: how much waits at a stage of the pipeline."""

    name: str
    lag: float | None
    unit: str
    detail: str


# Freshness ------------------------------------------------------------------


def freshness_s(now: float, pending: Iterable[Pending]) -> float:
    """Age of the oldest waiting change; 0 when nothing waits."""
    times = [p.committed_at_s for p in pending]
    return max(0.0, now - min(times)) if times else 0.0


def delivering(connectors: Sequence[ConnectorTask], connector: str) -> bool:
    """True when the connector and all its tasks (at least one) report RUNNING."""
    rows = [c for c in connectors if c.connector == connector]
    tasks = [c for c in rows if c.task != "connector"]
    return bool(tasks) and all(c.up for c in rows)


def slot_pending(
    slot: SlotState, connector_up: bool, advanced_at_s: float, now: float
) -> Pending | None:
    """The slot's waiting WAL as a pending change, or None (see the module doc)."""
    if slot.lag_bytes is None or slot.lag_bytes <= SLOT_NOISE_BYTES:
        return None
    stalled = now - advanced_at_s >= SLOT_STALL_S
    if connector_up and slot.active and not stalled:
        return None
    return Pending("debezium", advanced_at_s, f"slot {slot.slot}")


class SlotTracker:
    """Remembers when each slot's confirmed position last moved."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int | None, float]] = {}

    def advanced_at(
        self, slot: SlotState, now: float, first_seen_s: float | None = None
    ) -> float:
        """When the confirmed position last changed; `first_seen_s` stands in for
        the time before the first observation (now when None)."""
        previous = self._seen.get(slot.slot)
        if previous is None:
            since = now if first_seen_s is None else min(now, first_seen_s)
        elif previous[0] != slot.confirmed_lsn:
            since = now
        else:
            since = previous[1]
        self._seen[slot.slot] = (slot.confirmed_lsn, since)
        return since

    def known(self, name: str) -> bool:
        return name in self._seen


def source_commit_ms(value: bytes | None) -> int | None:
    """The source commit time (epoch ms) a message carries, or None.

    Knows the LTV message (`source_ts_ms`) and Debezium's envelope (`source.ts_ms`,
    also inside `payload` when schemas are on, or `__source_ts_ms` once flattened).
    """
    if not value:
        return None
    try:
        document = json.loads(value)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    if isinstance(document.get("payload"), dict):
        document = document["payload"]
    candidates = (
        document.get("source_ts_ms"),
        document.get("__source_ts_ms"),
        _nested(document, "source", "ts_ms"),
    )
    for candidate in candidates:
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            return candidate
    return None


def _nested(document: dict[str, Any], *keys: str) -> Any:
    value: Any = document
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# Latency percentiles ----------------------------------------------------------


def histogram_quantile(
    q: float, buckets: Sequence[tuple[float, float]]
) -> float | None:
    """The q-quantile of a cumulative histogram, as Prometheus estimates it.

    Linear within the bucket the rank falls in, from the bound below it (0 for
    the first); a rank in the +Inf bucket gives the highest finite bound. None
    when the histogram is empty.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_delta(
    older: HistogramReading, newer: HistogramReading
) -> tuple[tuple[float, float], ...] | None:
    """Observations between two readings, bucket by bucket; None after a reset."""
    if [b for b, _ in older.buckets] != [b for b, _ in newer.buckets]:
        return None
    delta = tuple(
        (bound, new - old)
        for (bound, old), (_, new) in zip(older.buckets, newer.buckets, strict=True)
    )
    if any(count < 0 for _, count in delta):
        return None
    return delta


def latency_summary(buckets: Sequence[tuple[float, float]] | None) -> LatencySummary:
    if not buckets or buckets[-1][1] <= 0:
        return LatencySummary()
    return LatencySummary(
        p50=histogram_quantile(0.50, buckets),
        p95=histogram_quantile(0.95, buckets),
        p99=histogram_quantile(0.99, buckets),
        count=int(buckets[-1][1]),
    )


class LatencyWindow:
    """Readings of the worker's latency histogram over the last window."""

    def __init__(self, window_s: float = LATENCY_WINDOW_S) -> None:
        self.window_s = window_s
        self._readings: deque[tuple[float, HistogramReading]] = deque()

    def add(self, now: float, reading: HistogramReading) -> LatencySummary:
        """Keep a reading; the percentiles since the oldest one in the window."""
        if self._readings and bucket_delta(self._readings[-1][1], reading) is None:
            self._readings.clear()  # the worker restarted: its counts began again
        self._readings.append((now, reading))
        # Keep the newest reading at or before the window's start as the base.
        while len(self._readings) > 2 and self._readings[1][0] <= now - self.window_s:
            self._readings.popleft()
        if len(self._readings) < 2:
            return LatencySummary()
        return latency_summary(bucket_delta(self._readings[0][1], reading))


def parse_worker_metrics(text: str) -> WorkerReading:
    """The counters and the latency histogram from the worker's /metrics text.

    Raises ValueError when the text is not Prometheus exposition format.
    """
    counters: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.startswith("revetl_worker_") and name.endswith("_total"):
                counters[name.removeprefix("revetl_worker_")[: -len("_total")]] = (
                    sample.value
                )
            elif name == LATENCY_FAMILY + "_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort(key=lambda pair: pair[0])
    return WorkerReading(
        tuple(sorted(counters.items())), HistogramReading(tuple(buckets))
    )


# Views -----------------------------------------------------------------------


def stages(snapshot: Snapshot) -> list[Stage]:
    """Lag at each stage, in pipeline order."""
    names = snapshot.names
    slot = snapshot.slot(names.slot)
    if slot is None:
        why = "unknown" if snapshot.slots is None else "missing"
        debezium = Stage("debezium", None, "bytes", f"slot {names.slot} {why}")
    else:
        state = "active" if slot.active else "inactive"
        debezium = Stage(
            "debezium",
            slot.lag_bytes,
            "bytes",
            f"slot {slot.slot} {state}, wal_status {slot.wal_status}",
        )
    return [
        debezium,
        _group_stage(snapshot, "clickhouse", names.clickhouse_group),
        _group_stage(snapshot, "worker", names.worker_group),
    ]


def _group_stage(snapshot: Snapshot, stage: str, group_name: str) -> Stage:
    group = snapshot.group(group_name)
    if group is None:
        return Stage(stage, None, "messages", f"group {group_name} unknown")
    members = "?" if group.members is None else str(group.members)
    detail = f"group {group_name}, {members} member(s)"
    oldest = [p for p in snapshot.pending if p.stage == stage]
    if oldest:
        age = max(0.0, snapshot.time - min(p.committed_at_s for p in oldest))
        detail += f", oldest waiting {age:.1f} s"
    return Stage(stage, group.lag, "messages", detail)


def state_json(snapshot: Snapshot) -> dict[str, Any]:
    """The /api/state document (the live page and `revetl lag --json` read it)."""
    worker = snapshot.worker
    reading = worker.reading
    latency = worker.latency
    return {
        "time": snapshot.time,
        "freshness_seconds": snapshot.freshness_seconds,
        "stages": [
            {"name": s.name, "lag": s.lag, "unit": s.unit, "detail": s.detail}
            for s in stages(snapshot)
        ],
        "connectors": [
            {"connector": c.connector, "task": c.task, "state": c.state, "up": c.up}
            for c in snapshot.connectors
        ],
        "clickhouse_consumers": [
            {
                "table": c.table,
                "last_poll_age_seconds": c.last_poll_age_seconds,
                "messages_read": c.messages_read,
                "exceptions": c.exceptions,
            }
            for c in snapshot.clickhouse_consumers or ()
        ],
        "worker": {
            "up": worker.up,
            **{
                name: None if reading is None else reading.counter(name)
                for name in WORKER_COUNTERS
            },
            "latency_seconds": {
                "p50": latency.p50,
                "p95": latency.p95,
                "p99": latency.p99,
                "count": latency.count,
            },
        },
        "dead_letters": {
            "clickhouse": snapshot.dead_letters_clickhouse,
            "worker": snapshot.dead_letters_worker,
        },
        "components": [
            {"name": c.name, "state": c.state, "healthy": c.healthy, "detail": c.detail}
            for c in snapshot.components
        ],
        "errors": list(snapshot.errors),
        "collect_seconds": snapshot.collect_seconds,
    }


def render_metrics(snapshot: Snapshot) -> bytes:
    """The /metrics text of a snapshot, the worker's own families included."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        yield from _kafka_families(s)
        yield from _slot_families(s)
        yield _connector_family(s)
        yield from _clickhouse_families(s)
        yield _dead_letter_family(s)
        yield from _worker_families(s)
        yield from _monitor_families(s)


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _kafka_families(s: Snapshot) -> Iterator[Metric]:
    lag = _gauge(
        "revetl_consumer_lag_messages",
        "Messages past the consumer group's committed offset (high watermark "
        "minus committed offset, or minus the low watermark before any commit).",
        ("group", "topic", "partition"),
    )
    members = _gauge(
        "revetl_consumer_group_members",
        "Members of the consumer group (0: nobody consumes).",
        ("group",),
    )
    for group in s.groups or ():
        for p in group.partitions:
            lag.add_metric([p.group, p.topic, str(p.partition)], p.lag)
        if group.members is not None:
            members.add_metric([group.group], group.members)
    yield lag
    yield members


def _slot_families(s: Snapshot) -> Iterator[Metric]:
    lag = _gauge(
        "revetl_replication_slot_lag_bytes",
        "WAL bytes between the source's current position and the slot's "
        "confirmed position (pg_current_wal_lsn() - confirmed_flush_lsn).",
        ("slot",),
    )
    active = _gauge(
        "revetl_replication_slot_active",
        "1 while a consumer (Debezium) is connected to the slot.",
        ("slot",),
    )
    status = _gauge(
        "revetl_replication_slot_wal_status",
        "1 for the slot's current wal_status; 'lost' means Debezium must snapshot "
        "again.",
        ("slot", "status"),
    )
    for slot in s.slots or ():
        if slot.lag_bytes is not None:
            lag.add_metric([slot.slot], slot.lag_bytes)
        active.add_metric([slot.slot], 1 if slot.active else 0)
        known = list(WAL_STATUSES)
        if slot.wal_status not in known:
            known.append(slot.wal_status)
        for name in known:
            status.add_metric([slot.slot, name], 1 if name == slot.wal_status else 0)
    yield lag
    yield active
    yield status


def _connector_family(s: Snapshot) -> Metric:
    up = _gauge(
        "revetl_connector_up",
        '1 when the Kafka Connect connector (task="connector") or one of its '
        "tasks is RUNNING; 0 when paused, failed, missing or Connect is down.",
        ("connector", "task"),
    )
    for c in s.connectors:
        up.add_metric([c.connector, c.task], 1 if c.up else 0)
    return up


def _clickhouse_families(s: Snapshot) -> Iterator[Metric]:
    age = _gauge(
        "revetl_clickhouse_consumer_last_poll_age_seconds",
        "Seconds since the ClickHouse Kafka table's consumer last polled "
        "(+Inf: never).",
        ("table",),
    )
    read = _gauge(
        "revetl_clickhouse_consumer_messages_read",
        "Messages the ClickHouse Kafka table's consumers read since ClickHouse "
        "started.",
        ("table",),
    )
    exceptions = _gauge(
        "revetl_clickhouse_consumer_exceptions",
        "Exceptions system.kafka_consumers lists for the table (it keeps the last 10).",
        ("table",),
    )
    for c in s.clickhouse_consumers or ():
        poll_age = (
            math.inf if c.last_poll_age_seconds is None else c.last_poll_age_seconds
        )
        age.add_metric([c.table], poll_age)
        read.add_metric([c.table], c.messages_read)
        exceptions.add_metric([c.table], c.exceptions)
    yield age
    yield read
    yield exceptions


def _dead_letter_family(s: Snapshot) -> Metric:
    family = _gauge(
        "revetl_dead_letters",
        "Rows in the dead-letter tables: stage=clickhouse is revetl.dead_letters "
        "(malformed change events), stage=worker the product DB's dead_letters.",
        ("stage",),
    )
    for stage, count in (
        ("clickhouse", s.dead_letters_clickhouse),
        ("worker", s.dead_letters_worker),
    ):
        if count is not None:
            family.add_metric([stage], count)
    return family


def _worker_families(s: Snapshot) -> Iterator[Metric]:
    up = _gauge(
        "revetl_worker_up", "1 when the worker's own /metrics answered this scrape."
    )
    up.add_metric([], 1 if s.worker.up else 0)
    yield up
    if s.worker.up and s.worker.metrics_text:
        yield from text_string_to_metric_families(s.worker.metrics_text)


def _monitor_families(s: Snapshot) -> Iterator[Metric]:
    fresh = _gauge(
        "revetl_freshness_seconds",
        "Age of the oldest source change not yet in the product DB; 0 when every "
        "stage is drained (definition: services/monitor_state.py).",
    )
    if s.freshness_seconds is not None:
        fresh.add_metric([], s.freshness_seconds)
    yield fresh
    components = _gauge(
        "revetl_component_up",
        "1 when the stack component's health probe passes (revetl status).",
        ("component",),
    )
    for c in s.components:
        components.add_metric([c.name], 1 if c.healthy else 0)
    yield components
    collect = _gauge(
        "revetl_monitor_collect_seconds", "How long the last collection took."
    )
    collect.add_metric([], s.collect_seconds)
    yield collect
    errors = CounterMetricFamily(
        "revetl_monitor_errors",
        "Failed collections per source since the monitor started.",
        labels=["source"],
    )
    for source, count in s.errors_total:
        errors.add_metric([source], count)
    yield errors
