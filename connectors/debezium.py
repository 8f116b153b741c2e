"""The Debezium Postgres connector: its config, and registering it with Connect."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import psycopg

from services.config import Settings
from services.connect import DEBEZIUM_POSTGRES, ConnectError, ConnectWorker
from services.errors import FatalError, RetriableError
from services.postgres import PostgresCluster

log = logging.getLogger(__name__)

CONNECTOR_NAME = "revetl-source"
TOPIC_PREFIX = "oltp"
SLOT_NAME = "revetl"
PUBLICATION_NAME = "revetl"
USERS_TABLE = "public.users"
SALES_TABLE = "public.sales"
TABLES = (USERS_TABLE, SALES_TABLE)
HEARTBEAT_TABLE = "public.revetl_heartbeat"
HEARTBEAT_QUERY = (
    "INSERT INTO public.revetl_heartbeat (id, beat_at) VALUES (1, now()) "
    "ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at"
)


def topic_for(table: str) -> str:
    """The Kafka topic Debezium writes a table's changes to, e.g. oltp.public.sales."""
    return f"{TOPIC_PREFIX}.{table}"


SOURCE_SQL = Path(__file__).resolve().parent / "postgres" / "source.sql"


def source_schema_sql() -> str:
    return SOURCE_SQL.read_text()


def apply_source_schema(source: PostgresCluster) -> None:
    """Create the users and sales tables in the source database if they are absent."""
    with psycopg.connect(source.dsn(), autocommit=True) as conn:
        conn.execute(source_schema_sql())


def connector_config(settings: Settings, source: PostgresCluster) -> dict[str, str]:
    """The connector's settings; each non-default one is there for a reason."""
    info = psycopg.conninfo.conninfo_to_dict(source.dsn())
    return {
        "connector.class": DEBEZIUM_POSTGRES,
        "tasks.max": "1",
        # Built into Postgres 10+; the default, decoderbufs, needs a server plugin.
        "plugin.name": "pgoutput",
        "database.hostname": str(info.get("host", "127.0.0.1")),
        "database.port": str(info.get("port", 5432)),
        "database.user": str(info.get("user", settings.pg_user)),
        "database.password": str(info.get("password", "")),
        "database.dbname": str(info.get("dbname", settings.source_pg_database)),
        "topic.prefix": TOPIC_PREFIX,
        "table.include.list": ",".join((*TABLES, HEARTBEAT_TABLE)),
        "slot.name": SLOT_NAME,
        "publication.name": PUBLICATION_NAME,
        # A publication of just our tables; `all_tables` needs a superuser.
        "publication.autocreate.mode": "filtered",
        # Rows that exist when the connector first starts are read once (op "r").
        "snapshot.mode": "initial",
        # Deletes carry the old row; ClickHouse has no use for Kafka tombstones.
        "tombstones.on.delete": "false",
        "decimal.handling.mode": "string",
        # Move the slot on an idle database so Postgres does not hold WAL for it.
        "heartbeat.interval.ms": "10000",
        "heartbeat.action.query": HEARTBEAT_QUERY,
        # The default 500 ms idle wait between polls would eat half the latency goal.
        "poll.interval.ms": "20",
        "max.batch.size": "4096",
        "max.queue.size": "16384",
    }


def register(
    settings: Settings,
    connect: ConnectWorker,
    source: PostgresCluster,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Create or update the connector, then wait until its task runs."""
    config = connector_config(settings, source)
    connect.request("PUT", f"/connectors/{CONNECTOR_NAME}/config", config)
    log.info("registered connector=%s tables=%s", CONNECTOR_NAME, ",".join(TABLES))
    return wait_running(connect, timeout_s)


def connector_status(connect: ConnectWorker) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = connect.request(
            "GET", f"/connectors/{CONNECTOR_NAME}/status"
        )
    except ConnectError as exc:
        if exc.status == 404:
            return None
        raise
    return state


def wait_running(connect: ConnectWorker, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            state = connector_status(connect)
        except RetriableError:
            state = None
        tasks = [] if state is None else state.get("tasks", [])
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if failed:
            trace = str(failed[0].get("trace", "")).splitlines()[:3]
            message = (
                f"connector {CONNECTOR_NAME} failed: {' / '.join(trace)}; see "
                "`revetl logs connect`, fix the cause, then run `revetl up` again"
            )
            raise FatalError(message)
        if state and tasks and all(t.get("state") == "RUNNING" for t in tasks):
            return state
        time.sleep(0.5)
    message = (
        f"connector {CONNECTOR_NAME} not running after {timeout_s:.0f} s "
        f"(last status: {state}); see `revetl logs connect`"
    )
    raise RetriableError(message)


def reset_capture(connect: ConnectWorker, source: PostgresCluster) -> None:
    """Remove the connector, its stored offsets and its replication slot.

    The next `register` then snapshots every row again (op "r") before streaming:
    the way to recover a slot that Postgres invalidated, or to re-read the source.
    Re-read rows carry a newer LSN than what the pipeline holds, and the same data.
    """
    if connector_status(connect) is not None:
        connect.request("PUT", f"/connectors/{CONNECTOR_NAME}/stop")
        _wait_state(connect, "STOPPED", timeout_s=60.0)
        connect.request("DELETE", f"/connectors/{CONNECTOR_NAME}/offsets")
        connect.request("DELETE", f"/connectors/{CONNECTOR_NAME}")
    _drop_slot(source, timeout_s=60.0)
    log.info("reset capture connector=%s slot=%s", CONNECTOR_NAME, SLOT_NAME)


def _wait_state(connect: ConnectWorker, wanted: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = connector_status(connect)
        if state is not None and state["connector"]["state"] == wanted:
            return
        time.sleep(0.3)
    raise RetriableError(f"connector {CONNECTOR_NAME} not {wanted} in {timeout_s} s")


def _drop_slot(source: PostgresCluster, timeout_s: float) -> None:
    """Drop the slot once the connector's walsender has let go of it."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(source.dsn(), autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                (SLOT_NAME,),
            ).fetchone()
            if row is None:
                return
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT_NAME,))
                return
            if time.monotonic() > deadline:
                message = (
                    f"replication slot {SLOT_NAME} still in use after {timeout_s} s"
                )
                raise RetriableError(message)
            time.sleep(0.3)
