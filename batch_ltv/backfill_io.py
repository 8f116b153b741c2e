"""Backfills: the daily LTV history in ClickHouse and the product DB's ranks.

Both read the CDC state tables the stream keeps in ClickHouse, so they need no
access to the source database. Each run is recorded in the product DB's
`backfill_runs` table, failures included.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from clickhouse_connect.driver.client import Client
from psycopg import sql

from batch_ltv.backfill import (
    DRY_RUN,
    FAILED,
    HISTORY,
    SUCCEEDED,
    TARGET,
    BackfillRun,
    DayRange,
    TargetBackfill,
    count_moves,
)
from services.config import Settings, load_settings
from services.errors import ConfigurationError, FatalError, RevetlError
from services.stack import Stack
from stream_app.config import WorkerSettings
from stream_app.events import LtvEvent
from stream_app.ranks import RankRules, load_rules
from stream_app.target import apply_schema, rank_rows, schema_identifier, write_bulk

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent / "sql"
HISTORY_TABLE = "dds.user_ltv_history"
APPLICATION_NAME = "revetl-backfill"
LOCK_TIMEOUT_MS = 60_000
"""How long `backfill target` waits for the worker's writer lock."""

Progress = Callable[[int, int], None]

FAILED_MESSAGE = (
    "backfill #{id} ({kind}) failed: {reason}. It is recorded as failed (`revetl "
    "backfill runs`); nothing of it was committed to the product DB. Check that "
    "the stack is up (`revetl status`), then run it again."
)

RUN_COLUMNS = "id, kind, started_at, finished_at, rows, outcome, detail, params"
START_RUN = (
    "INSERT INTO {schema}.backfill_runs (kind, params) VALUES (%s, %s) "
    f"RETURNING {RUN_COLUMNS}"
)
FINISH_RUN = (
    "UPDATE {schema}.backfill_runs SET finished_at = clock_timestamp(), "
    f"rows = %s, outcome = %s, detail = %s WHERE id = %s RETURNING {RUN_COLUMNS}"
)
RECENT_RUNS = (
    f"SELECT {RUN_COLUMNS} FROM {{schema}}.backfill_runs ORDER BY id DESC LIMIT %s"
)


def worker_settings(settings: Settings) -> WorkerSettings:
    """The rank rules, time zone and schema settings that go with `settings`."""
    if isinstance(settings, WorkerSettings):
        return settings
    return load_settings(WorkerSettings, **settings.model_dump())


def read_sql(name: str) -> str:
    """A SQL file of this package without its `--` comment lines."""
    text = (SQL_DIR / name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def backfill_history(
    settings: Settings,
    first: date,
    last: date,
    *,
    rules: RankRules | None = None,
    on_progress: Progress | None = None,
) -> BackfillRun:
    """Recompute `dds.user_ltv_history` for execution days `first`..`last`.

    A range computed again replaces its rows: each chunk of days is deleted, then
    inserted. Between the two, readers of that chunk see no rows.
    """
    try:
        days = DayRange.checked(first, last)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    worker = worker_settings(settings)
    rules = rules or load_rules(worker.rank_rules_path)
    params = {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "rules": str(rules.source),
    }
    stack = Stack.from_settings(settings)
    with _recorded(stack, worker.target_schema, HISTORY, params) as record:
        load_table = f"{HISTORY_TABLE}_load_{record.result.id}"
        with stack.clickhouse.client() as client:
            rows = _history(client, days, rules, load_table, on_progress or _quiet)
        record.finish(rows, SUCCEEDED, f"{days.days} days")
    return record.result


def _history(
    client: Client, days: DayRange, rules: RankRules, load_table: str,
    on_progress: Progress,
) -> int:  # fmt: skip
    for statement in read_sql("history_table.sql").split(";"):
        if statement.strip():
            client.command(statement)
    client.command(f"CREATE TABLE IF NOT EXISTS {load_table} AS {HISTORY_TABLE}")
    try:
        return _history_months(client, days, rules, load_table, on_progress)
    finally:
        client.command(f"DROP TABLE IF EXISTS {load_table}")


def _history_months(
    client: Client, days: DayRange, rules: RankRules, load_table: str,
    on_progress: Progress,
) -> int:  # fmt: skip
    keep = read_sql("history_keep.sql").replace("{load_table}", load_table)
    insert = (
        read_sql("history_insert.sql")
        .replace("{load_table}", load_table)
        .replace("{user_class}", rules.clickhouse_expression("ltv"))
    )
    written = done = 0
    on_progress(0, days.days)
    for month in days.months():
        values = {
            "first": month.first, "last": month.last, "days": month.days,
            "month": month.month,
        }  # fmt: skip
        client.command(keep, parameters=values)
        client.command(insert, parameters=values)
        written += _count_days(client, load_table, month)
        partition = f"'{month.month}'"
        client.command(
            f"ALTER TABLE {HISTORY_TABLE} REPLACE PARTITION ID {partition} "
            f"FROM {load_table}"
        )
        client.command(f"ALTER TABLE {load_table} DROP PARTITION ID {partition}")
        done += month.days
        on_progress(done, days.days)
        log.info("history month replaced first=%s last=%s rows_so_far=%d",
                 month.first, month.last, written)  # fmt: skip
    return written


def _count_days(client: Client, table: str, days: DayRange) -> int:
    # Counted rather than taken from the insert's summary: the chDB front
    # reports no written_rows.
    counted = client.query(
        f"SELECT count() FROM {table} "
        "WHERE execution_day BETWEEN %(first)s AND %(last)s",
        parameters={"first": days.first, "last": days.last},
    ).result_rows
    return int(counted[0][0])


def backfill_target(
    settings: Settings,
    *,
    dry_run: bool = False,
    rules: RankRules | None = None,
    on_progress: Progress | None = None,
) -> TargetBackfill:
    """Re-rank every user ClickHouse knows into the product DB.

    The LTV is recomputed from the live sales in ClickHouse; the rows go through
    the stream's guarded upsert in one transaction, so a row the stream has made
    newer meanwhile is kept. A dry run counts what would change and rolls back.
    Also how changed rank rules reach users who buy nothing after the change.
    """
    worker = worker_settings(settings)
    rules = rules or load_rules(worker.rank_rules_path)
    params = {"dry_run": dry_run, "rules": str(rules.source)}
    progress = on_progress or _quiet
    stack = Stack.from_settings(settings)
    schema = worker.target_schema
    with _recorded(stack, schema, TARGET, params) as record:
        with stack.clickhouse.client() as client:
            events = _current_state(client)
        progress(0, len(events))
        rows = rank_rows(events, rules, worker.stat_date_tz)
        with _connect(stack, lock_timeout_ms=LOCK_TIMEOUT_MS) as conn:
            bulk = write_bulk(conn, schema, rows, dry_run=dry_run)
        progress(len(events), len(events))
        moves = count_moves(bulk.moves)
        changes = sum(moves.values())
        outcome = DRY_RUN if dry_run else SUCCEEDED
        verb = "would change" if dry_run else "changed"
        detail = f"{len(events)} users read, {changes} {verb} class"
        record.finish(bulk.batch.fresh, outcome, detail)
    return TargetBackfill(
        run=record.result,
        users=len(events),
        fresh=bulk.batch.fresh,
        upserts=bulk.batch.upserts,
        deletes=bulk.batch.deletes,
        moves=moves,
        dry_run=dry_run,
    )


def _current_state(client: Client) -> list[LtvEvent]:
    result = client.query(read_sql("current_state.sql"))
    return [
        LtvEvent(
            user_id=int(user_id),
            ltv=int(ltv),
            sale_count=int(sale_count),
            source_lsn=int(lsn),
            source_ts_ms=int(ts_ms),
            user_deleted=bool(deleted),
        )
        for user_id, ltv, sale_count, lsn, ts_ms, deleted in result.result_rows
    ]


def recent_runs(settings: Settings, limit: int = 20) -> list[BackfillRun]:
    """The latest backfill runs, newest first."""
    worker = worker_settings(settings)
    stack = Stack.from_settings(settings)
    with _connect(stack) as conn:
        _ensure_runs_table(conn, worker.target_schema)
        query = _runs_sql(RECENT_RUNS, worker.target_schema)
        return [_run(row) for row in conn.execute(query, (limit,))]


class _Record:
    """The run row of one backfill, finished exactly once."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, run: BackfillRun):
        self.conn = conn
        self.schema = schema
        self.result = run

    def finish(self, rows: int, outcome: str, detail: str) -> None:
        query = _runs_sql(FINISH_RUN, self.schema)
        row = self.conn.execute(query, (rows, outcome, detail, self.result.id))
        self.result = _run(row.fetchone())
        log.info(
            "backfill finished id=%d kind=%s outcome=%s rows=%d seconds=%.1f",
            self.result.id, self.result.kind, outcome, rows, self.result.seconds,
        )  # fmt: skip


@contextmanager
def _recorded(
    stack: Stack, schema: str, kind: str, params: dict[str, Any]
) -> Iterator[_Record]:
    """A run row that says `running`, then how the run ended."""
    with _connect(stack) as conn:
        _ensure_runs_table(conn, schema)
        query = _runs_sql(START_RUN, schema)
        row = conn.execute(query, (kind, json.dumps(params))).fetchone()
        record = _Record(conn, schema, _run(row))
        log.info("backfill started id=%d kind=%s params=%s", record.result.id, kind,
                 json.dumps(params))  # fmt: skip
        began = time.monotonic()
        try:
            yield record
        except BaseException as exc:
            reason = _first_line(exc)
            try:
                record.finish(0, FAILED, reason)
            except psycopg.Error as record_exc:
                log.warning("backfill id=%d not marked failed: %s",
                            record.result.id, _first_line(record_exc))  # fmt: skip
            seconds = time.monotonic() - began
            log.error("backfill failed id=%d kind=%s after %.1f s: %s",
                      record.result.id, kind, seconds, reason)  # fmt: skip
            if isinstance(exc, RevetlError) or not isinstance(exc, Exception):
                raise
            message = FAILED_MESSAGE.format(
                id=record.result.id, kind=kind, reason=reason
            )
            raise FatalError(message) from exc


@contextmanager
def _connect(
    stack: Stack, lock_timeout_ms: int | None = None
) -> Iterator[psycopg.Connection[Any]]:
    options = "" if lock_timeout_ms is None else f"-c lock_timeout={lock_timeout_ms}"
    try:
        conn = psycopg.connect(
            stack.target_pg.dsn(),
            autocommit=True,
            application_name=APPLICATION_NAME,
            options=options,
        )
    except psycopg.OperationalError as exc:
        message = (
            f"cannot reach the product DB ({_first_line(exc)}): start the stack "
            "with `revetl up` or set REVETL_TARGET_PG_URL"
        )
        raise ConfigurationError(message) from exc
    with conn:
        yield conn


def _ensure_runs_table(conn: psycopg.Connection[Any], schema: str) -> None:
    apply_schema(conn, schema)
    conn.execute(_runs_sql(read_sql("backfill_runs.sql"), schema))


def _runs_sql(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(schema=schema_identifier(schema))


def _run(row: Sequence[Any] | None) -> BackfillRun:
    if row is None:
        raise FatalError("backfill_runs returned no row for the run")
    run_id, kind, started, finished, rows, outcome, detail, params = row
    return BackfillRun(
        id=int(run_id),
        kind=str(kind),
        started_at=started,
        finished_at=finished,
        rows=int(rows),
        outcome=str(outcome),
        detail=str(detail),
        params=dict(params),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quiet(done: int, total: int) -> None:
    """The progress callback of callers that want none."""
