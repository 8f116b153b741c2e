"""The real worker process against the real Kafka and target Postgres."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from services.config import REPO_ROOT
from services.stack import Stack
from stream_app import target
from stream_app.ranks import DEFAULT_RULES_PATH

WAIT_S = 90.0
COMMITTED_MS = 1_760_000_000_000


class WorkerProcess:
    """`python -m stream_app` with its own topic, group, schema and state directory."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream_app"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1) -> None:
        def seen() -> bool:
            self.check_alive()
            return len(re.findall(pattern, self.log)) >= count

        eventually(seen, f"{count} log line(s) matching {pattern!r}\n{self.log}")

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log}")

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not stop in time)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                pytest.fail(f"worker ignored SIGTERM:\n{self.log}")
        return self.proc.returncode

    def stopped_counts(self) -> dict[str, int]:
        """The counters of the last `stopped ...` line."""
        lines = re.findall(r"INFO stream_app\.app stopped (.*)", self.log)
        assert lines, self.log
        return {k: int(v) for k, v in (pair.split("=") for pair in lines[-1].split())}


class Feed:
    """Produces LTV messages keyed by user, remembering each partition's end offset."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.ends: dict[int, int] = {}
        self.errors: list[Any] = []

    def send(self, *messages: tuple[int, bytes]) -> None:
        for user_id, value in messages:
            self.producer.produce(
                self.topic, value=value, key=str(user_id).encode(), on_delivery=self._on
            )
        self.producer.flush(30)
        assert not self.errors

    def _on(self, error: Any, message: Any) -> None:
        if error is not None:
            self.errors.append(error)
            return
        partition = message.partition()
        self.ends[partition] = max(self.ends.get(partition, 0), message.offset() + 1)


def ltv(user_id: int, lsn: int, value: int, deleted: int = 0) -> tuple[int, bytes]:
    document = {
        "user_id": user_id,
        "ltv": value,
        "sale_count": 1,
        "source_lsn": lsn,
        "source_ts_ms": COMMITTED_MS + lsn,
        "user_deleted": deleted,
    }
    return user_id, json.dumps(document).encode()


def eventually(
    check: Callable[[], object], what: str, timeout_s: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"gave up after {timeout_s:.0f} s waiting for {what}")


def committed(admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    """Committed offsets of the group per partition; absent ones are left out."""
    partitions = admin.list_topics(topic, timeout=30).topics[topic].partitions
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in partitions]
    )
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def wait_all_committed(admin: AdminClient, group: str, feed: Feed) -> None:
    eventually(
        lambda: committed(admin, group, feed.topic) == feed.ends,
        f"the group to commit up to {feed.ends}",
    )


def rows(conn: target.Connection, schema: str, text: str) -> list[tuple[Any, ...]]:
    statement = sql.SQL(text).format(s=sql.Identifier(schema))
    return conn.execute(statement).fetchall()


def ranks(conn: target.Connection, schema: str) -> dict[int, tuple[Any, ...]]:
    found = rows(
        conn,
        schema,
        "SELECT user_id, ltv, user_class, discount_pct, source_lsn "
        "FROM {s}.user_ltv_history ORDER BY user_id",
    )
    return {row[0]: row[1:] for row in found}


def changes(conn: target.Connection, schema: str) -> list[tuple[Any, ...]]:
    return rows(
        conn,
        schema,
        "SELECT user_id, old_class, new_class, source_lsn FROM {s}.rank_changes "
        "ORDER BY user_id, id",
    )


@pytest.fixture
def worker_env(
    stack: Stack, topic: str, group: str, schema: str, tmp_path: Path
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REVETL_STATE_DIR=str(tmp_path / "state"),
        REVETL_LTV_TOPIC=topic,
        REVETL_WORKER_GROUP=group,
        REVETL_TARGET_SCHEMA=schema,
        REVETL_WORKER_SUMMARY_INTERVAL_S="1",
        REVETL_WORKER_COMMIT_INTERVAL_S="0.2",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


@pytest.fixture
def feed(stack: Stack, topic: str) -> Feed:
    return Feed(stack.kafka.bootstrap, topic)


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(worker_env, tmp_path / "worker.log").start()
    process.wait_for_log(r"INFO stream_app\.app ready ")
    process.wait_for_log(r"partitions assigned .* partitions=\[0, 1\]")
    yield process
    process.stop()


def test_ltv_changes_become_ranks_and_history(
    worker: WorkerProcess,
    feed: Feed,
    kafka_admin: AdminClient,
    group: str,
    schema: str,
    target_conn: target.Connection,
) -> None:
    feed.send(ltv(1, 10, 500_000), ltv(2, 11, 70_000_000), ltv(3, 12, 2_000_000))
    wait_all_committed(kafka_admin, group, feed)
    feed.send(ltv(1, 20, 1_200_000), ltv(1, 20, 1_200_000), ltv(3, 30, 0, deleted=1))
    wait_all_committed(kafka_admin, group, feed)
    # Stale versions arriving late: an older LTV and a resurrection attempt.
    feed.send(ltv(1, 15, 9), ltv(3, 25, 3_000_000))
    wait_all_committed(kafka_admin, group, feed)

    assert ranks(target_conn, schema) == {
        1: (1_200_000, "B", 5, 20),
        2: (70_000_000, "S", 25, 11),
    }
    assert changes(target_conn, schema) == [
        (1, None, "A", 10),
        (1, "A", "B", 20),
        (2, None, "S", 11),
        (3, None, "B", 12),
        (3, "B", None, 30),
    ]
    assert rows(
        target_conn, schema, "SELECT user_id, source_lsn FROM {s}.user_ltv_tombstones"
    ) == [(3, 30)]
    worker.wait_for_log(r"INFO stream_app\.app summary interval_s=1 events=\d+")
    assert worker.stop() == 0
    assert "ERROR" not in worker.log
    counts = worker.stopped_counts()
    assert counts["events"] >= 8
    assert (counts["rank_changes"], counts["dead_letters"]) == (5, 0)


def test_a_restarted_worker_resumes_after_the_committed_offsets(
    worker: WorkerProcess,
    worker_env: dict[str, str],
    feed: Feed,
    kafka_admin: AdminClient,
    group: str,
    schema: str,
    target_conn: target.Connection,
    tmp_path: Path,
) -> None:
    feed.send(*(ltv(user, 10, 1_000_000 * user) for user in range(1, 21)))
    wait_all_committed(kafka_admin, group, feed)
    assert worker.stop() == 0

    feed.send(ltv(21, 10, 42))
    again = WorkerProcess(worker_env, tmp_path / "again.log").start()
    try:
        eventually(lambda: 21 in ranks(target_conn, schema), "user 21's row")
        wait_all_committed(kafka_admin, group, feed)
    finally:
        assert again.stop() == 0

    assert again.stopped_counts()["events"] == 1
    assert len(ranks(target_conn, schema)) == 21


def test_malformed_messages_are_dead_lettered_and_the_worker_goes_on(
    worker: WorkerProcess,
    feed: Feed,
    kafka_admin: AdminClient,
    group: str,
    schema: str,
    target_conn: target.Connection,
) -> None:
    negative = json.dumps({**json.loads(ltv(9, 5, 0)[1]), "ltv": -5}).encode()
    feed.send(ltv(1, 10, 100), (7, b"not json at all"), (9, negative), ltv(2, 11, 200))
    wait_all_committed(kafka_admin, group, feed)

    letters = rows(
        target_conn,
        schema,
        'SELECT raw, reason, topic, "offset" >= 0 FROM {s}.dead_letters ORDER BY raw',
    )
    assert [(raw, reason.split(":")[0]) for raw, reason, *_ in letters] == [
        ("not json at all", "not valid JSON"),
        (negative.decode(), "field ltv must be in 0..9223372036854775807, got -5"),
    ]
    assert {(t, ok) for *_, t, ok in letters} == {(feed.topic, True)}
    assert len(re.findall(r"ERROR stream_app\.app dead letter ", worker.log)) == 2

    feed.send(ltv(3, 12, 5_000_000))
    eventually(lambda: 3 in ranks(target_conn, schema), "user 3 after the bad ones")
    assert set(ranks(target_conn, schema)) == {1, 2, 3}
    worker.check_alive()


def test_offsets_are_committed_only_after_the_target_commit(
    stack: Stack,
    worker_env: dict[str, str],
    feed: Feed,
    kafka_admin: AdminClient,
    group: str,
    schema: str,
    target_conn: target.Connection,
    tmp_path: Path,
) -> None:
    worker_env.update(
        REVETL_WORKER_LOCK_TIMEOUT_S="0.3",
        REVETL_WORKER_RETRY_INITIAL_S="0.1",
        REVETL_WORKER_RETRY_MAX_S="0.4",
    )
    first = WorkerProcess(worker_env, tmp_path / "first.log").start()
    second = WorkerProcess(worker_env, tmp_path / "second.log")
    try:
        first.wait_for_log(r"partitions assigned .* partitions=\[0, 1\]")
        # Holding the schema's writer lock keeps every batch from committing.
        with (
            psycopg.connect(stack.target_pg.dsn(), autocommit=True) as blocker,
            blocker.transaction(),
        ):
            target.lock_target(blocker, schema)
            feed.send(*(ltv(user, 10, 2_000_000) for user in range(1, 11)))
            first.wait_for_log(r"WARNING stream_app\.app target write failed", 3)

            assert committed(kafka_admin, group, feed.topic) == {}
            assert first.stop() == 0
            assert committed(kafka_admin, group, feed.topic) == {}
            assert ranks(target_conn, schema) == {}

            second.start()
            second.wait_for_log(r"WARNING stream_app\.app target write failed", 2)
            assert committed(kafka_admin, group, feed.topic) == {}

        wait_all_committed(kafka_admin, group, feed)
        assert len(ranks(target_conn, schema)) == 10
    finally:
        first.stop()
        if second.proc is not None:
            assert second.stop() == 0

    attempts = re.findall(
        r"target write failed attempt=(\d+) .*lock timeout", first.log
    )
    assert attempts[:3] == ["1", "2", "3"]
    assert second.stopped_counts()["upserts"] == 10


def test_a_batch_the_target_refuses_stops_the_worker_uncommitted(
    worker: WorkerProcess,
    feed: Feed,
    kafka_admin: AdminClient,
    group: str,
    schema: str,
    target_conn: target.Connection,
) -> None:
    feed.send(ltv(1, 10, 100))
    wait_all_committed(kafka_admin, group, feed)
    before = dict(feed.ends)
    drop = sql.SQL("DROP TABLE {}.rank_changes").format(sql.Identifier(schema))
    target_conn.execute(drop)

    feed.send(ltv(2, 11, 200))
    assert worker.proc is not None
    worker.proc.wait(timeout=WAIT_S)

    assert worker.proc.returncode == 2
    assert "ERROR stream_app.app worker stopping: batch not written" in worker.log
    assert "ERROR stream_app worker failed: target Postgres refused" in worker.log
    assert committed(kafka_admin, group, feed.topic) == before
    assert feed.ends != before


def test_an_unreachable_target_is_retried_until_stopped(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    worker_env.update(
        REVETL_TARGET_PG_URL="postgresql://postgres@127.0.0.1:1/ltv?connect_timeout=2",
        REVETL_WORKER_RETRY_INITIAL_S="0.1",
        REVETL_WORKER_RETRY_MAX_S="0.4",
    )
    process = WorkerProcess(worker_env, tmp_path / "worker.log").start()

    process.wait_for_log(r"WARNING stream_app\.app target connect failed", 4)

    assert process.stop() == 0
    delays = re.findall(
        r"target connect failed attempt=\d+ retry_in_s=([\d.]+)", process.log
    )
    assert delays[:4] == ["0.10", "0.20", "0.40", "0.40"]
    assert "stopped before start" in process.log


def test_an_edited_rules_file_ranks_the_next_batches(
    worker_env: dict[str, str],
    tmp_path: Path,
    feed: Feed,
    kafka_admin: AdminClient,
    group: str,
    schema: str,
    target_conn: target.Connection,
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(DEFAULT_RULES_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    env = {**worker_env, "REVETL_RANK_RULES_PATH": str(rules)}
    process = WorkerProcess(env, tmp_path / "rules-worker.log").start()
    try:
        process.wait_for_log(r"partitions assigned .* partitions=\[0, 1\]")
        feed.send(ltv(1, 10, 4_000_000))
        wait_all_committed(kafka_admin, group, feed)
        assert ranks(target_conn, schema)[1] == (4_000_000, "B", 5, 10)

        rules.write_text(rules.read_text().replace("= 5_000_000", "= 3_000_000"))
        feed.send(ltv(1, 20, 4_000_001))
        wait_all_committed(kafka_admin, group, feed)
        assert ranks(target_conn, schema)[1] == (4_000_001, "C", 10, 20)
        process.wait_for_log(r"INFO stream_app\.app rank rules reloaded .*C>=3000000")

        rules.write_text("[[rank]]\nclass = 'A'\n")  # an edit in progress
        feed.send(ltv(1, 30, 4_000_002))
        wait_all_committed(kafka_admin, group, feed)
        assert ranks(target_conn, schema)[1] == (4_000_002, "C", 10, 30)
        process.wait_for_log(r"WARNING .* keeping the last good rules")
    finally:
        assert process.stop() == 0
