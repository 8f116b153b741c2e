"""Write a seeding plan into the source database with COPY, resumably.

Runs are recorded in `public.revetl_seed_runs` (one row: the plan, the library
versions, progress). Each batch of about BATCH_SALES sales commits its users,
their sales and the progress in one transaction, so a second run with the same
plan continues where the first stopped, or adds nothing if it had finished. A
plan that differs from the recorded one is refused: its ids would coincide with
rows of other content. A first run is refused too when the id ranges it would
fill (users 1..N, sales 1..S) already hold rows, e.g. sales that the demo
inserted with the identity sequence's ids; seed an empty database first.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from importlib.metadata import version

import numpy as np
import psycopg

from batch_ltv.seed import (
    BLOCK_USERS,
    GENERATOR_VERSION,
    USERS_FROM,
    Block,
    SeedPlan,
    generate,
    user_columns,
)
from services.errors import ConfigurationError

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[object, ...]]
Progress = Callable[[int, int], None]

BATCH_SALES = 100_000
"""Sales per COPY transaction: bigger batches commit less often, smaller ones
lose less work when a run is interrupted."""

LOCK_KEY = 0x5EED_0001
"""Advisory lock taken for the whole run so two seeders never interleave."""

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS public.revetl_seed_runs (
    id                  INT PRIMARY KEY CHECK (id = 1),
    seed                BIGINT NOT NULL,
    users               BIGINT NOT NULL,
    max_sales_per_user  BIGINT NOT NULL,
    until               DATE NOT NULL,
    generator_version   INT NOT NULL,
    libraries           TEXT NOT NULL,
    users_total         BIGINT NOT NULL,
    sales_total         BIGINT NOT NULL,
    users_done          BIGINT NOT NULL DEFAULT 0,
    sales_done          BIGINT NOT NULL DEFAULT 0,
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at         TIMESTAMPTZ
)
"""
RUN_SQL = (
    "SELECT seed, users, max_sales_per_user, until, generator_version, "
    "users_done, sales_done FROM public.revetl_seed_runs WHERE id = 1"
)
INSERT_RUN_SQL = (
    "INSERT INTO public.revetl_seed_runs (id, seed, users, max_sales_per_user, "
    "until, generator_version, libraries, users_total, sales_total) "
    "VALUES (1, %s, %s, %s, %s, %s, %s, %s, %s)"
)
PROGRESS_SQL = (
    "UPDATE public.revetl_seed_runs SET users_done = %s, sales_done = %s, "
    "finished_at = CASE WHEN %s THEN now() END WHERE id = 1"
)
USERS_IN_RANGE_SQL = "SELECT count(*) FROM public.users WHERE id BETWEEN 1 AND %s"
SALES_IN_RANGE_SQL = "SELECT count(*) FROM public.sales WHERE id BETWEEN 1 AND %s"
COPY_USERS_SQL = (
    "COPY public.users (id, created_at, first_name, last_name, middle_name, "
    "birthday, email) FROM STDIN"
)
COPY_SALES_SQL = (
    "COPY public.sales (id, user_id, created_at, branch, amount) "
    "FROM STDIN (FORMAT BINARY)"
)
SEQUENCE_SQL = (
    "SELECT setval(seq, %(last_id)s) "
    "FROM (SELECT pg_get_serial_sequence(%(table)s, 'id')::regclass AS seq) AS s "
    "WHERE coalesce(pg_sequence_last_value(seq), 0) < %(last_id)s"
)

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
SALE_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("id_len", ">i4"), ("id", ">i8"),
        ("user_id_len", ">i4"), ("user_id", ">i8"),
        ("created_at_len", ">i4"), ("created_at", ">i8"),
        ("branch_len", ">i4"), ("branch", ">i4"),
        ("amount_len", ">i4"), ("amount", ">i8"),
    ]
)  # fmt: skip
"""One sale in Postgres' binary COPY format: field count, then length + value."""

_PG_EPOCH_TO_USERS_FROM_US = int((USERS_FROM - datetime(2000, 1, 1)).total_seconds())
_PG_EPOCH_TO_USERS_FROM_US *= 1_000_000


@dataclass(frozen=True)
class SeedResult:
    users_added: int
    sales_added: int
    seconds: float
    sales_per_second: float


@dataclass(frozen=True)
class _Run:
    users_done: int
    sales_done: int
    users_total: int
    sales_total: int


def libraries() -> str:
    return f"faker=={version('faker')} numpy=={np.__version__}"


def sales_copy_bytes(block: Block) -> bytes:
    """The block's sales as binary COPY rows (no header or trailer)."""
    rows = np.empty(block.sale_count, dtype=SALE_ROW)
    rows["fields"] = 5
    for name, width in (("id", 8), ("user_id", 8), ("created_at", 8)):
        rows[f"{name}_len"] = width
    rows["branch_len"] = 4
    rows["amount_len"] = 8
    rows["id"] = block.sale_ids
    rows["user_id"] = block.sale_user_ids
    rows["created_at"] = block.sale_seconds * 1_000_000 + _PG_EPOCH_TO_USERS_FROM_US
    rows["branch"] = block.branches
    rows["amount"] = block.amounts
    return rows.tobytes()


PLAN_FIELDS = ("seed", "users", "max_sales_per_user", "until", "generator_version")


def _plan_values(plan: SeedPlan) -> tuple[object, ...]:
    return (
        plan.seed,
        plan.users,
        plan.max_sales_per_user,
        plan.until,
        GENERATOR_VERSION,
    )


def _describe(values: tuple[object, ...]) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(PLAN_FIELDS, values, strict=True))


def _check_recorded(row: tuple[object, ...], plan: SeedPlan) -> None:
    recorded, wanted = tuple(row[:5]), _plan_values(plan)
    if recorded == wanted:
        return
    message = (
        f"this database was seeded with {_describe(recorded)}, not "
        f"{_describe(wanted)} as asked: the same ids would get other rows. "
        "Repeat the recorded parameters to resume, or seed an empty database"
    )
    raise ConfigurationError(message)


def _check_free(conn: Connection, plan: SeedPlan, sales_total: int) -> None:
    users = _count(conn, USERS_IN_RANGE_SQL, plan.users)
    sales = _count(conn, SALES_IN_RANGE_SQL, sales_total)
    if users == 0 and sales == 0:
        return
    message = (
        f"cannot seed: public.users has {users} rows with ids 1..{plan.users} and "
        f"public.sales has {sales} rows with ids 1..{sales_total}, which seeding "
        "would write, and no seeding run is recorded in public.revetl_seed_runs. "
        "Seed an empty database (before the demo inserts anything)"
    )
    raise ConfigurationError(message)


def _count(conn: Connection, query: str, upper: int) -> int:
    row = conn.execute(query, (upper,)).fetchone()
    return 0 if row is None else int(str(row[0]))


def _start_run(conn: Connection, plan: SeedPlan) -> _Run:
    """The recorded progress, recording a new run if there is none."""
    sales_total = user_columns(plan).sales_total
    with conn.transaction():
        conn.execute(RUNS_DDL)
        row = conn.execute(RUN_SQL).fetchone()
        if row is None:
            _check_free(conn, plan, sales_total)
            values = (plan.seed, plan.users, plan.max_sales_per_user, plan.until)
            info = (GENERATOR_VERSION, libraries(), plan.users, sales_total)
            conn.execute(INSERT_RUN_SQL, (*values, *info))
            return _Run(0, 0, plan.users, sales_total)
    _check_recorded(row, plan)
    users_done, sales_done = int(str(row[5])), int(str(row[6]))
    present = _count(conn, USERS_IN_RANGE_SQL, plan.users)
    if present != users_done:
        message = (
            f"public.revetl_seed_runs says {users_done} users were seeded but "
            f"public.users has {present} rows with ids 1..{plan.users}: rows were "
            "added or deleted outside seeding. Seed an empty database"
        )
        raise ConfigurationError(message)
    return _Run(users_done, sales_done, plan.users, sales_total)


def _batches(plan: SeedPlan, start_user: int) -> Iterator[list[Block]]:
    batch: list[Block] = []
    size = 0
    for block in generate(plan, start_user):
        batch.append(block)
        size += block.sale_count
        if size >= BATCH_SALES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_batch(conn: Connection, batch: list[Block]) -> None:
    with conn.cursor() as cur:
        with cur.copy(COPY_USERS_SQL) as copy:
            for block in batch:
                for user in block.users:
                    copy.write_row(user)
        with cur.copy(COPY_SALES_SQL) as copy:
            copy.write(COPY_HEADER)
            for block in batch:
                copy.write(sales_copy_bytes(block))
            copy.write(COPY_TRAILER)


def _advance_sequences(conn: Connection, run: _Run) -> None:
    """Move the identity sequences past the seeded ids, so later inserts that take
    the default id (the demo's sales) do not collide with them."""
    for table, last_id in (("users", run.users_total), ("sales", run.sales_total)):
        if last_id > 0:
            conn.execute(SEQUENCE_SQL, {"table": f"public.{table}", "last_id": last_id})


def _write(
    conn: Connection, plan: SeedPlan, run: _Run, on_progress: Progress
) -> tuple[int, int]:
    users_done, sales_done = run.users_done, run.sales_done
    rows_total = run.users_total + run.sales_total
    for batch in _batches(plan, users_done):
        users_done += sum(len(b.users) for b in batch)
        sales_done += sum(b.sale_count for b in batch)
        finished = users_done == run.users_total
        with conn.transaction():
            _write_batch(conn, batch)
            conn.execute(PROGRESS_SQL, (users_done, sales_done, finished))
        on_progress(users_done + sales_done, rows_total)
    with conn.transaction():
        _advance_sequences(conn, run)
    return users_done - run.users_done, sales_done - run.sales_done


def seed(
    dsn: str,
    users: int = 10_000,
    max_sales_per_user: int = 1_000,
    seed: int = 42,
    until: date = date(2025, 10, 13),
    on_progress: Progress | None = None,
) -> SeedResult:
    """Fill public.users and public.sales of `dsn` with the plan's rows.

    Idempotent for one plan: what is already written is skipped.
    """
    plan = SeedPlan.checked(users, max_sales_per_user, seed, until)
    began = time.monotonic()
    log.info("seeding %s batch_sales=%d", _describe(_plan_values(plan)), BATCH_SALES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        run = _start_run(conn, plan)
        if run.users_done % BLOCK_USERS and run.users_done != run.users_total:
            message = f"recorded users_done={run.users_done} is not a block boundary"
            raise ConfigurationError(message)
        users_added, sales_added = _write(conn, plan, run, on_progress or _quiet)
    seconds = time.monotonic() - began
    rate = sales_added / seconds if seconds > 0 else 0.0
    log.info(
        "seeded users_added=%d sales_added=%d seconds=%.1f sales_per_second=%.0f",
        users_added,
        sales_added,
        seconds,
        rate,
    )
    return SeedResult(users_added, sales_added, seconds, rate)


def _quiet(rows_done: int, rows_total: int) -> None:
    """The default progress callback: nothing to show."""
