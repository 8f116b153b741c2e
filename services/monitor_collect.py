"""Read the pipeline's state from its servers into one monitor snapshot.

Everything here only reads, and takes no lock and no consumer-group membership:
Kafka through the admin API (groups, committed offsets, watermarks) and one
consumer that is only ever assigned partitions to read a single message and
never commits; Postgres through plain catalog and count queries in autocommit;
Connect and the worker through their HTTP endpoints. A source that fails is
reported in the snapshot's errors and the others are read all the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from clickhouse_connect.driver.client import Client
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from connectors import debezium
from services.config import INFRA_DIR
from services.health import first_line
from services.kafka import admin_client, watermarks
from services.local_http import get_bytes
from services.monitor_state import (
    SOURCES,
    ClickHouseConsumer,
    ComponentState,
    ConnectorTask,
    GroupLag,
    LatencyWindow,
    PartitionLag,
    Pending,
    PipelineNames,
    SlotState,
    SlotTracker,
    Snapshot,
    WorkerState,
    delivering,
    freshness_s,
    parse_worker_metrics,
    slot_pending,
    source_commit_ms,
)
from services.stack import Stack, status

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

SLOTS_SQL = """
SELECT slot_name,
       active,
       coalesce(wal_status, ''),
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint
FROM pg_replication_slots
WHERE slot_type = 'logical' AND database = current_database()
ORDER BY slot_name
"""
LAST_HEARTBEAT_SQL = (
    "SELECT extract(epoch FROM beat_at)::float8 FROM public.revetl_heartbeat "
    "WHERE id = 1"
)
"""When Debezium last ran its heartbeat query (connectors/debezium.py): the last
time it was alive, for a monitor that starts while Debezium is down."""
TARGET_DEAD_LETTERS_SQL = "SELECT count(*) FROM public.dead_letters"
CLICKHOUSE_CONSUMERS_SQL = """
SELECT concat(database, '.', table),
       toUnixTimestamp(max(last_poll_time)),
       sum(num_messages_read),
       sum(length(`exceptions.text`))
FROM system.kafka_consumers
WHERE (database, table) IN (
    SELECT database, name FROM system.tables
    WHERE engine = 'Kafka' AND notEmpty(dependencies_table)
)
GROUP BY database, table
ORDER BY 1
"""
"""Kafka tables that a materialized view reads from: consumers, not sinks."""
CLICKHOUSE_DEAD_LETTERS_SQL = "SELECT count() FROM revetl.dead_letters"

KAFKA_TIMEOUT_S = 5.0
PEEK_TIMEOUT_S = 3.0
HTTP_TIMEOUT_S = 2.0
STATEMENT_TIMEOUT_MS = 5000
PEEK_GROUP = "revetl-monitor-peek"
"""librdkafka wants a group id even for a consumer that is only assigned
partitions; this one never joins the group and never commits to it."""


def connect_group_id() -> str | None:
    """Kafka Connect's own group id, from the worker properties `revetl up` uses."""
    path = INFRA_DIR / "kafka" / "connect-distributed.properties"
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "group.id":
            return value.strip()
    return None


class Collector:
    """Reads every source once per `collect()`; keeps clients and history between.

    Not thread-safe: one thread collects. The snapshots it returns are immutable.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        s = stack.settings
        self.names = PipelineNames(
            clickhouse_group=s.clickhouse_consumer_group,
            worker_group=s.worker_group,
            connector=debezium.CONNECTOR_NAME,
            slot=debezium.SLOT_NAME,
        )
        self.connect_group = None if s.connect_url else connect_group_id()
        self.errors_total = dict.fromkeys(SOURCES, 0)
        self.failing: dict[str, str] = {}
        self.slots = SlotTracker()
        self.slot_advanced: dict[str, float] = {}
        self.latency = LatencyWindow()
        self.peeked: dict[tuple[str, int], tuple[int, float]] = {}
        self._admin: AdminClient | None = None
        self._consumer: Consumer | None = None
        self._clickhouse: Client | None = None
        self._pg: dict[str, Connection] = {}

    def collect(self) -> Snapshot:
        began, now = time.monotonic(), time.time()
        errors: list[str] = []
        groups = self._guard("kafka", self._groups, errors)
        slots = self._guard("source-pg", lambda: self._slots(now), errors)
        connectors = self._guard("connect", self._connectors, errors)
        if connectors is None:
            connectors = (
                ConnectorTask(self.names.connector, "connector", "UNREACHABLE"),
            )
        clickhouse = self._guard("clickhouse", self._clickhouse_state, errors)
        consumers, ch_dead_letters = clickhouse if clickhouse else (None, None)
        worker_dead_letters = self._guard(
            "target-pg", self._worker_dead_letters, errors
        )
        worker = self._guard("worker", lambda: self._worker(now), errors)
        components = self._guard("components", self._components, errors)
        pending = self._guard(
            "freshness", lambda: self._pending(now, groups, slots, connectors), errors
        )
        freshness = None
        if groups is not None and pending is not None:
            freshness = freshness_s(now, pending)
        return Snapshot(
            time=now,
            names=self.names,
            groups=groups,
            slots=slots,
            connectors=connectors,
            clickhouse_consumers=consumers,
            dead_letters_clickhouse=ch_dead_letters,
            dead_letters_worker=worker_dead_letters,
            worker=worker or WorkerState(up=False),
            freshness_seconds=freshness,
            pending=pending or (),
            components=components or (),
            errors=tuple(errors),
            errors_total=tuple(sorted(self.errors_total.items())),
            collect_seconds=time.monotonic() - began,
        )

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._clickhouse is not None:
            self._clickhouse.close()
            self._clickhouse = None
        for conn in self._pg.values():
            conn.close()
        self._pg.clear()
        self._admin = None

    def _guard(self, source: str, read: Callable[[], T], errors: list[str]) -> T | None:
        """Run one source's read; on failure count it, note it, and go on."""
        try:
            value = read()
        except Exception as exc:  # any client may raise anything; keep serving
            reason = first_line(exc)
            self.errors_total[source] += 1
            errors.append(f"{source}: {reason}")
            if self.failing.get(source) != reason:
                log.warning("collect failed source=%s error=%s", source, reason)
            self.failing[source] = reason
            self._reset(source)
            return None
        if self.failing.pop(source, None) is not None:
            log.info("collect recovered source=%s", source)
        return value

    def _reset(self, source: str) -> None:
        """Drop a client that failed, so the next collection opens a fresh one."""
        if source == "clickhouse" and self._clickhouse is not None:
            self._clickhouse.close()
            self._clickhouse = None
        conn = self._pg.pop(source, None)
        if conn is not None:
            conn.close()

    # Kafka -----------------------------------------------------------------

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = admin_client(self.stack.kafka.bootstrap)
        return self._admin

    def _groups(self) -> tuple[GroupLag, ...]:
        admin = self._admin_client()
        metadata = admin.list_topics(timeout=KAFKA_TIMEOUT_S)
        plan = {
            self.names.clickhouse_group: [
                debezium.topic_for(t) for t in debezium.TABLES
            ],
            self.names.worker_group: [self.stack.settings.ltv_topic],
        }
        wanted = {
            group: [
                TopicPartition(topic, p)
                for topic in topics
                if topic in metadata.topics
                for p in sorted(metadata.topics[topic].partitions)
            ]
            for group, topics in plan.items()
        }
        committed = {g: _committed(admin, g, tps) for g, tps in wanted.items()}
        if self.connect_group is not None:
            connect = _committed(admin, self.connect_group, None)
            if connect:
                committed[self.connect_group] = connect
                wanted[self.connect_group] = [TopicPartition(t, p) for t, p in connect]
        every = [tp for tps in wanted.values() for tp in tps]
        ends = watermarks(admin, every, "latest", KAFKA_TIMEOUT_S)
        starts = watermarks(admin, every, "earliest", KAFKA_TIMEOUT_S)
        members = _members(admin, list(plan))
        groups = []
        for group, tps in wanted.items():
            rows = []
            for tp in tps:
                key = (tp.topic, tp.partition)
                offset = committed[group].get(key, -1)
                position = offset if offset >= 0 else starts[key]
                rows.append(
                    PartitionLag(group, tp.topic, tp.partition, position, ends[key])
                )
            groups.append(GroupLag(group, members.get(group), tuple(rows)))
        return tuple(groups)

    def _peek_consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer({
                "bootstrap.servers": self.stack.kafka.bootstrap,
                "group.id": PEEK_GROUP,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "max.partition.fetch.bytes": 65536,
                "queued.max.messages.kbytes": 1024,
                "socket.timeout.ms": 3000,
                "log_level": 0,
            })  # fmt: skip
        return self._consumer

    def _oldest_waiting(self, groups: Sequence[GroupLag]) -> list[Pending]:
        """The source commit time of the first uncommitted message of every
        partition with lag; each is read once, then cached by its offset."""
        stage_of = {
            self.names.clickhouse_group: "clickhouse",
            self.names.worker_group: "worker",
        }
        waiting = {
            (p.topic, p.partition): (stage_of[g.group], p)
            for g in groups
            if g.group in stage_of
            for p in g.partitions
            if p.lag > 0
        }
        unread = {
            key: p
            for key, (_, p) in waiting.items()
            if self.peeked.get(key, (None, 0.0))[0] != p.position
        }
        if unread:
            for key, committed_at in self._read_first(unread).items():
                self.peeked[key] = (unread[key].position, committed_at)
        self.peeked = {k: v for k, v in self.peeked.items() if k in waiting}
        missing = [k for k in waiting if k not in self.peeked]
        if missing:
            where = ", ".join(f"{t}[{p}]" for t, p in missing)
            message = (
                f"no message read at the committed offset of {where} within "
                f"{PEEK_TIMEOUT_S:.0f} s; freshness unknown this round"
            )
            raise TimeoutError(message)
        return [
            Pending(stage, self.peeked[key][1], f"{key[0]}[{key[1]}]")
            for key, (stage, _) in waiting.items()
        ]

    def _read_first(
        self, unread: dict[tuple[str, int], PartitionLag]
    ) -> dict[tuple[str, int], float]:
        consumer = self._peek_consumer()
        consumer.assign(
            [TopicPartition(t, p, lag.position) for (t, p), lag in unread.items()]
        )
        found: dict[tuple[str, int], float] = {}
        deadline = time.monotonic() + PEEK_TIMEOUT_S
        try:
            while len(found) < len(unread) and time.monotonic() < deadline:
                msg = consumer.poll(0.1)
                if msg is None or msg.error() is not None:
                    continue
                key = (str(msg.topic()), int(msg.partition() or 0))
                wanted = unread.get(key)
                # A message fetched for an earlier assignment may still be queued.
                if wanted is None or (msg.offset() or 0) < wanted.position:
                    continue
                if key not in found:
                    ms = source_commit_ms(msg.value())
                    if ms is None:
                        ms = msg.timestamp()[1]
                    found[key] = ms / 1000
        finally:
            consumer.unassign()
        return found

    # Postgres --------------------------------------------------------------

    def _pg_conn(self, source: str) -> Connection:
        conn = self._pg.get(source)
        if conn is None or conn.closed:
            cluster = (
                self.stack.source_pg if source == "source-pg" else self.stack.target_pg
            )
            conn = psycopg.connect(
                cluster.dsn(),
                autocommit=True,
                connect_timeout=3,
                application_name="revetl-monitor",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            )
            self._pg[source] = conn
        return conn

    def _slots(self, now: float) -> tuple[SlotState, ...]:
        conn = self._pg_conn("source-pg")
        slots = tuple(
            SlotState(
                slot=str(name),
                active=bool(active),
                wal_status=str(wal_status),
                lag_bytes=None if lag is None else int(lag),
                confirmed_lsn=None if lsn is None else int(lsn),
            )
            for name, active, wal_status, lag, lsn in conn.execute(SLOTS_SQL)
        )
        for slot in slots:
            first_seen = None
            if not self.slots.known(slot.slot) and slot.slot == self.names.slot:
                first_seen = _last_heartbeat(conn)
            self.slot_advanced[slot.slot] = self.slots.advanced_at(
                slot, now, first_seen
            )
        return slots

    def _worker_dead_letters(self) -> int:
        row = self._pg_conn("target-pg").execute(TARGET_DEAD_LETTERS_SQL).fetchone()
        return 0 if row is None else int(row[0])

    # Connect, ClickHouse, worker, components ------------------------------------

    def _connectors(self) -> tuple[ConnectorTask, ...]:
        data = self.stack.connect.request("GET", "/connectors?expand=status")
        rows: list[ConnectorTask] = []
        for name in sorted(data):
            state = data[name].get("status", {})
            rows.append(
                ConnectorTask(name, "connector", str(state["connector"]["state"]))
            )
            for task in sorted(state.get("tasks", []), key=lambda t: int(t["id"])):
                rows.append(ConnectorTask(name, str(task["id"]), str(task["state"])))
        if self.names.connector not in data:
            rows.append(ConnectorTask(self.names.connector, "connector", "MISSING"))
        return tuple(rows)

    def _clickhouse_state(
        self,
    ) -> tuple[tuple[ClickHouseConsumer, ...], int]:
        if self._clickhouse is None:
            self._clickhouse = self.stack.clickhouse.client(
                connect_timeout=3, send_receive_timeout=10
            )
        client = self._clickhouse
        now = time.time()
        consumers = tuple(
            ClickHouseConsumer(
                table=str(table),
                last_poll_age_seconds=max(0.0, now - int(polled)) if polled else None,
                messages_read=int(read),
                exceptions=int(exceptions),
            )
            for table, polled, read, exceptions in client.query(
                CLICKHOUSE_CONSUMERS_SQL
            ).result_rows
        )
        dead_letters = int(client.query(CLICKHOUSE_DEAD_LETTERS_SQL).result_rows[0][0])
        return consumers, dead_letters

    def _worker(self, now: float) -> WorkerState:
        port = self.stack.settings.worker_metrics_port
        if port == 0:
            raise ValueError("worker metrics are off (REVETL_WORKER_METRICS_PORT=0)")
        url = f"http://{self.stack.settings.bind_host}:{port}/metrics"
        try:
            text = get_bytes(url, HTTP_TIMEOUT_S).decode()
        except OSError as exc:
            raise ConnectionError(
                f"worker metrics at {url} unreachable ({exc})"
            ) from exc
        reading = parse_worker_metrics(text)
        latency = self.latency.add(now, reading.latency)
        return WorkerState(up=True, metrics_text=text, reading=reading, latency=latency)

    def _components(self) -> tuple[ComponentState, ...]:
        return tuple(
            ComponentState(s.name, s.state.value, s.healthy, s.detail)
            for s in status(self.stack)
        )

    # Freshness ---------------------------------------------------------------

    def _pending(
        self,
        now: float,
        groups: tuple[GroupLag, ...] | None,
        slots: tuple[SlotState, ...] | None,
        connectors: Sequence[ConnectorTask],
    ) -> tuple[Pending, ...]:
        pending: list[Pending] = []
        slot = next((s for s in slots or () if s.slot == self.names.slot), None)
        if slot is not None:
            up = delivering(connectors, self.names.connector)
            waiting = slot_pending(slot, up, self.slot_advanced[slot.slot], now)
            if waiting is not None:
                pending.append(waiting)
        if groups is not None:
            pending += self._oldest_waiting(groups)
        return tuple(pending)


def _committed(
    admin: AdminClient, group: str, partitions: list[TopicPartition] | None
) -> dict[tuple[str, int], int]:
    """The group's committed offsets (all of them when partitions is None)."""
    if partitions is not None and not partitions:
        return {}
    request = [ConsumerGroupTopicPartitions(group, partitions)]
    future = admin.list_consumer_group_offsets(request)[group]
    result = future.result(timeout=KAFKA_TIMEOUT_S)
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in result.topic_partitions or ()
        if tp.offset >= 0 or partitions is not None
    }


def _members(admin: AdminClient, groups: list[str]) -> dict[str, int]:
    """Members per group; a group Kafka cannot describe is left out."""
    members = {}
    for group, future in admin.describe_consumer_groups(groups).items():
        try:
            members[group] = len(future.result(timeout=KAFKA_TIMEOUT_S).members)
        except Exception as exc:  # the client raises KafkaException and others
            log.debug("describe failed group=%s error=%s", group, exc)
    return members


def _last_heartbeat(conn: Connection) -> float | None:
    try:
        row = conn.execute(LAST_HEARTBEAT_SQL).fetchone()
    except psycopg.Error as exc:  # no heartbeat table yet: count from now
        log.debug("no heartbeat error=%s", exc)
        return None
    return None if row is None or row[0] is None else float(row[0])
