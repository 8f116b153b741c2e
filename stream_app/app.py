"""The faust-streaming worker: LTV changes from Kafka to loyalty ranks in the target.

Delivery is at least once. The agent takes batches with `noack_take`, which never
acks by itself; an event is acked only after the target transaction holding it has
committed, and faust commits to Kafka only offsets below the first unacked event. A
crash, a stop or a rebalance in the middle of a batch therefore replays it, which the
source-LSN guard in the target makes harmless.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, cast
from wsgiref.simple_server import WSGIServer

import faust
from faust.types import TP, EventT, StreamT
from prometheus_client import disable_created_metrics, start_http_server

from services.errors import DeadLetterError, FatalError, RetriableError, RevetlError
from services.kafka import KafkaBroker, admin_client
from services.postgres import PostgresCluster
from stream_app.config import WorkerSettings
from stream_app.events import LtvEvent, parse_event, printable
from stream_app.metrics import WorkerMetrics, end_to_end_latencies_s
from stream_app.ranks import RankRules, RulesFile, describe
from stream_app.retry import Backoff
from stream_app.target import (
    BatchResult,
    DeadLetter,
    RankRow,
    TargetWriter,
    rank_rows,
)

log = logging.getLogger(__name__)

AGENT_NAME = "apply-ranks"
LIBRARY_LOGGERS = ("faust", "mode", "aiokafka")
METADATA_MAX_AGE_MS = 10_000


@dataclass
class Counters:
    """What the worker did, over its life or since the last summary line."""

    events: int = 0
    batches: int = 0
    upserts: int = 0
    rank_changes: int = 0
    deletes: int = 0
    stale: int = 0
    dead_letters: int = 0
    retries: int = 0

    def add_batch(self, messages: int, result: BatchResult) -> None:
        self.events += messages
        self.batches += 1
        self.upserts += result.upserts
        self.rank_changes += result.rank_changes
        self.deletes += result.deletes
        self.stale += result.stale
        self.dead_letters += result.dead_letters

    def line(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


class RankApplier:
    """Turns one batch of Kafka events into one target transaction, retried until
    it commits. Malformed events become dead letters in the same transaction.

    Every committed batch is counted twice: in `Counters` for the log's summary
    lines and in `WorkerMetrics` for Prometheus, with each event's end-to-end
    latency taken right after the commit.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        rules: RulesFile,
        writer: TargetWriter,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.rules = rules
        self._reported_problem: str | None = None
        self.tz = settings.stat_date_tz
        self.writer = writer
        self.backoff = Backoff(
            settings.worker_retry_initial_s, settings.worker_retry_max_s
        )
        self.total = Counters()
        self.recent = Counters()
        self.metrics = WorkerMetrics() if metrics is None else metrics

    async def apply(self, events: Sequence[EventT[bytes]]) -> BatchResult:
        """Write the batch; returns only once the target transaction has committed."""
        parsed, letters = self.parse(events)
        rows = rank_rows(parsed, self.current_rules(), self.tz)
        result, committed_at_s = await self._write(rows, letters)
        for counters in (self.total, self.recent):
            counters.add_batch(len(events), result)
        latencies = end_to_end_latencies_s(parsed, committed_at_s)
        self.metrics.observe_batch(len(events), result, latencies)
        log.debug(
            "batch applied messages=%d users=%d upserts=%d rank_changes=%d stale=%d "
            "dead_letters=%d",
            len(events),
            result.events,
            result.upserts,
            result.rank_changes,
            result.stale,
            result.dead_letters,
        )
        return result

    def current_rules(self) -> RankRules:
        """The rules file's rules, read again when it changed since the last batch.

        A change applies to the events from the next batch on; users who buy
        nothing keep their class until `revetl backfill target` re-ranks them.
        """
        rules, changed = self.rules.current()
        if changed:
            log.info("rank rules reloaded path=%s classes=%s", rules.source,
                     describe(rules))  # fmt: skip
        problem = self.rules.problem
        if problem is not None and problem != self._reported_problem:
            log.warning("rank rules file unreadable, keeping the last good rules: %s",
                        problem)  # fmt: skip
        self._reported_problem = problem
        return rules

    def parse(
        self, events: Sequence[EventT[bytes]]
    ) -> tuple[list[LtvEvent], list[DeadLetter]]:
        parsed: list[LtvEvent] = []
        letters: list[DeadLetter] = []
        for event in events:
            message = event.message
            try:
                parsed.append(parse_event(message.value))
            except DeadLetterError as exc:
                log.error(
                    "dead letter topic=%s partition=%d offset=%d reason=%s",
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
                letters.append(
                    DeadLetter(
                        topic=message.topic,
                        partition=message.partition,
                        offset=message.offset,
                        raw=printable(message.value),
                        reason=str(exc),
                    )
                )
        return parsed, letters

    async def _write(
        self, rows: Sequence[RankRow], letters: list[DeadLetter]
    ) -> tuple[BatchResult, float]:
        """The batch's result and the epoch time its transaction committed."""
        failures = 0
        while True:
            try:
                return await asyncio.to_thread(self._write_stamped, rows, letters)
            except RetriableError as exc:
                failures += 1
                delay = self.backoff.delay_s(failures)
                for counters in (self.total, self.recent):
                    counters.retries += 1
                self.metrics.observe_retry()
                log.warning(
                    "target write failed attempt=%d retry_in_s=%.2f users=%d "
                    "dead_letters=%d error=%s",
                    failures,
                    delay,
                    len(rows),
                    len(letters),
                    exc,
                )
                await asyncio.sleep(delay)

    def _write_stamped(
        self, rows: Sequence[RankRow], letters: list[DeadLetter]
    ) -> tuple[BatchResult, float]:
        # Stamped in the writing thread: the event loop may be busy when it resumes.
        result = self.writer.write(rows, letters)
        return result, time.time()

    def take_summary(self) -> str:
        """The counters since the previous call, then starts counting afresh."""
        line, self.recent = self.recent.line(), Counters()
        return line


def faust_broker_url(bootstrap: str) -> str:
    """faust's broker URL (aiokafka transport) for a `host:port,host:port` list."""
    hosts = [host.strip() for host in bootstrap.split(",") if host.strip()]
    return ";".join(f"aiokafka://{host}" for host in hosts)


def build_app(settings: WorkerSettings, applier: RankApplier) -> faust.App:
    """The faust app: one agent over the LTV topic, a summary timer, and log lines."""
    s = settings
    app = faust.App(
        s.worker_group,
        broker=faust_broker_url(KafkaBroker(s).bootstrap),
        broker_client_id=s.worker_group,
        broker_commit_interval=s.worker_commit_interval_s,
        consumer_auto_offset_reset="earliest",
        # A topic created after the worker started is found at the next metadata
        # refresh; aiokafka's default of 5 minutes would leave it unread that long.
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        stream_buffer_maxsize=s.worker_stream_buffer,
        # The writes are idempotent, so a stop or rebalance need not wait for the
        # batch in flight; waiting would hang a stop while the target is down.
        stream_wait_empty=False,
        store="memory://",
        topic_disable_leader=True,
        autodiscover=False,
        datadir=str(s.path("worker", s.worker_group)),
        web_enabled=s.worker_web_port is not None,
        web_bind=s.bind_host,
        web_host=s.bind_host,
        web_port=s.worker_web_port or 6066,
        worker_redirect_stdouts=False,
    )
    topic = app.topic(s.ltv_topic, key_serializer="raw", value_serializer="raw")
    window_s = s.worker_batch_window_ms / 1000

    async def apply_ranks(stream: StreamT[bytes]) -> None:
        # Only the concrete Stream offers noack_take; agents always get one.
        batches = cast(faust.Stream[bytes], stream).noack_take(
            s.worker_batch_size, within=window_s
        )
        async for batch in batches:
            events = cast(Sequence[EventT[bytes]], batch)  # noack_take yields events
            try:
                await applier.apply(events)
            except Exception as exc:
                log.error("worker stopping: batch not written, not acked: %s", exc)
                await app.crash(exc)
                return
            for event in events:
                await stream.ack(event)

    app.agent(topic, name=AGENT_NAME)(apply_ranks)

    async def log_summary() -> None:
        log.info(
            "summary interval_s=%.0f %s",
            s.worker_summary_interval_s,
            applier.take_summary(),
        )

    app.timer(s.worker_summary_interval_s, name="summary")(log_summary)

    def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = cast(set[TP], args[0])
        partitions = sorted(tp.partition for tp in assigned if tp.topic == s.ltv_topic)
        log.info(
            "partitions assigned topic=%s group=%s partitions=%s",
            s.ltv_topic,
            s.worker_group,
            partitions,
        )

    app.on_partitions_assigned.connect(on_assigned)
    return app


class RankWorker(faust.Worker):
    """faust's worker, quiet on stdout, keeping our logging setup and process title.

    The process title is left alone because `revetl status` finds the worker by
    its command line.
    """

    def __init__(self, app: faust.App, settings: WorkerSettings, **kwargs: Any) -> None:
        super().__init__(app, quiet=True, override_logging=False, **kwargs)
        self.spinner = None  # it writes terminal escape codes to stdout
        self.ready_line = f"topic={settings.ltv_topic} group={settings.worker_group}"

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        log.info("ready %s", self.ready_line)

    def _setproctitle(self, info: str, *, ident: str = "") -> None:
        return None


def warn_if_topic_missing(settings: WorkerSettings) -> None:
    """Say so when the topic does not exist yet: the worker then idles until the
    first metadata refresh after it is created."""
    bootstrap = KafkaBroker(settings).bootstrap
    try:
        topics = admin_client(bootstrap).list_topics(timeout=5).topics
    except Exception as exc:  # the client raises KafkaException and others
        log.warning("cannot list Kafka topics bootstrap=%s error=%s", bootstrap, exc)
        return
    if settings.ltv_topic not in topics:
        log.warning(
            "topic %s does not exist yet; the worker reads it within %d s of its "
            "creation (ClickHouse creates it with its first message)",
            settings.ltv_topic,
            METADATA_MAX_AGE_MS // 1000,
        )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def connect_target(writer: TargetWriter, backoff: Backoff) -> None:
    """Connect and apply the schema, retrying while the target is unreachable."""
    failures = 0
    while True:
        try:
            writer.connect()
            return
        except RetriableError as exc:
            failures += 1
            delay = backoff.delay_s(failures)
            log.warning(
                "target connect failed attempt=%d retry_in_s=%.2f error=%s",
                failures,
                delay,
                exc,
            )
            time.sleep(delay)


def _quiet_library_loggers() -> None:
    """Keep faust's, mode's and aiokafka's INFO chatter out unless DEBUG is on, so
    the worker's own lifecycle lines stand out."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        if library.level == logging.NOTSET:
            library.setLevel(logging.WARNING)


def run_worker(settings: WorkerSettings) -> int:
    """Run the worker in the foreground until SIGTERM/SIGINT; the exit status.

    Raises `FatalError` (after a clean stop) when a batch cannot be written for a
    reason retrying will not fix.
    """
    log.info("worker starting %s", settings.log_summary())
    _quiet_library_loggers()
    rules = RulesFile(settings.rank_rules_path)
    log.info("rank rules path=%s classes=%s", rules.path, describe(rules.rules))
    writer = TargetWriter(
        PostgresCluster(settings, "target").dsn(),
        settings.target_schema,
        lock_timeout_s=settings.worker_lock_timeout_s,
        statement_timeout_s=settings.worker_statement_timeout_s,
    )
    applier = RankApplier(settings, rules, writer)
    server = serve_metrics(applier.metrics, settings)
    try:
        if not _connect_unless_stopped(writer, applier.backoff):
            log.info("stopped before start: SIGTERM while connecting to the target")
            return 0
        warn_if_topic_missing(settings)
        return _run_faust(settings, applier)
    finally:
        writer.close()
        if server is not None:
            server.shutdown()
            server.server_close()


def serve_metrics(
    metrics: WorkerMetrics, settings: WorkerSettings
) -> WSGIServer | None:
    """Serve /metrics on bind_host:worker_metrics_port in a daemon thread.

    Returns the server, or None when the port is 0 or busy: the worker then runs
    without metrics rather than not at all, and says so.
    """
    host, port = settings.bind_host, settings.worker_metrics_port
    if port == 0:
        log.info("metrics off (REVETL_WORKER_METRICS_PORT=0)")
        return None
    # The *_created series only add noise to a scrape; the function has no types.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.warning(
            "metrics not served: cannot listen on %s:%d (%s); another worker may "
            "hold the port, or move it with REVETL_WORKER_METRICS_PORT",
            host,
            port,
            exc,
        )
        return None
    log.info("metrics served url=http://%s:%d/metrics", host, port)
    return server


def _connect_unless_stopped(writer: TargetWriter, backoff: Backoff) -> bool:
    """Connect to the target (retrying); False if SIGTERM came first.

    faust handles SIGTERM once it runs; until then a stop must end the retries.
    """
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        connect_target(writer, backoff)
    except SystemExit:
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    return True


def _run_faust(settings: WorkerSettings, applier: RankApplier) -> int:
    settings.path("worker").mkdir(parents=True, exist_ok=True)
    worker = RankWorker(build_app(settings, applier), settings)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        log.info("stopped %s", applier.total.line())
    reason = worker.crash_reason
    if isinstance(reason, RevetlError):
        raise reason
    if reason is not None:
        message = f"the worker crashed: {reason!r}; the log above has the traceback"
        raise FatalError(message) from reason
    return code
