"""Seeding into a throwaway database on the source cluster, never into `oltp`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import psycopg
import pytest
from psycopg import sql

from batch_ltv.seed import SeedPlan, sale_rows, user_rows
from batch_ltv.seed_io import seed
from services.config import REPO_ROOT
from services.errors import ConfigurationError
from services.stack import Stack

pytestmark = pytest.mark.integration

SOURCE_SQL = REPO_ROOT / "connectors" / "postgres" / "source.sql"
USERS = 200
MAX_SALES = 50
UNTIL = date(2025, 10, 13)


@pytest.fixture
def seed_dsn(stack: Stack, unique: str) -> Iterator[str]:
    """A new database with the shop's tables, dropped after the test."""
    name = sql.Identifier(f"seedtest_{unique}")
    with psycopg.connect(stack.source_pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    dsn = stack.source_pg.dsn(database=f"seedtest_{unique}")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SOURCE_SQL.read_text())
        yield dsn
    finally:
        with psycopg.connect(stack.source_pg.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))


def counts(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        users = conn.execute("SELECT count(*) FROM public.users").fetchone()
        sales = conn.execute(
            "SELECT count(*), coalesce(sum(amount), 0) FROM public.sales"
        ).fetchone()
    assert users is not None and sales is not None
    return int(users[0]), int(sales[0]), int(sales[1])


def expected_sales() -> list[tuple[int, int]]:
    rows = sale_rows(SeedPlan.checked(USERS, MAX_SALES, 42, UNTIL))
    return [(s.id, s.amount) for s in rows]


def test_seeding_writes_the_generated_rows(seed_dsn: str) -> None:
    progress: list[tuple[int, int]] = []
    result = seed(
        seed_dsn, USERS, MAX_SALES, 42, UNTIL, lambda d, t: progress.append((d, t))
    )

    expected = expected_sales()
    assert result.users_added == USERS
    assert result.sales_added == len(expected) > 0
    assert counts(seed_dsn) == (USERS, len(expected), sum(a for _, a in expected))
    assert progress[-1] == (USERS + len(expected), USERS + len(expected))


def test_the_stored_rows_are_the_generated_rows(seed_dsn: str) -> None:
    seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)

    plan = SeedPlan.checked(USERS, MAX_SALES, 42, UNTIL)
    with psycopg.connect(seed_dsn) as conn:
        users = conn.execute(
            "SELECT id, created_at, first_name, last_name, middle_name, birthday, "
            "email FROM public.users ORDER BY id"
        ).fetchall()
        sales = conn.execute(
            "SELECT id, user_id, created_at, branch, amount FROM public.sales "
            "ORDER BY id"
        ).fetchall()
    assert users == [tuple(u) for u in user_rows(plan)]
    assert sales == [tuple(s) for s in sale_rows(plan)]


def test_the_same_seed_again_adds_nothing(seed_dsn: str) -> None:
    seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)
    before = counts(seed_dsn)

    again = seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)

    assert (again.users_added, again.sales_added) == (0, 0)
    assert counts(seed_dsn) == before


def test_another_seed_on_a_seeded_database_is_refused(seed_dsn: str) -> None:
    seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)
    before = counts(seed_dsn)

    with pytest.raises(ConfigurationError, match=r"seeded with seed=42 .* not seed=7"):
        seed(seed_dsn, USERS, MAX_SALES, 7, UNTIL)
    assert counts(seed_dsn) == before


def test_rows_already_in_the_id_range_are_refused(seed_dsn: str) -> None:
    with psycopg.connect(seed_dsn) as conn:
        conn.execute(
            "INSERT INTO public.sales (user_id, branch, amount) VALUES (1, 1, 5)"
        )

    with pytest.raises(ConfigurationError, match=r"public\.sales has 1 rows"):
        seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)
    assert counts(seed_dsn) == (0, 1, 5)


def test_later_default_ids_do_not_collide_with_seeded_ones(seed_dsn: str) -> None:
    seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)
    with psycopg.connect(seed_dsn) as conn:
        row = conn.execute(
            "INSERT INTO public.sales (user_id, branch, amount) VALUES (1, 1, 5) "
            "RETURNING id"
        ).fetchone()
    assert row is not None
    assert int(row[0]) == len(expected_sales()) + 1


def test_an_interrupted_run_resumes_where_it_stopped(seed_dsn: str) -> None:
    seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)
    # Undo the last block as if the run had stopped before committing it.
    with psycopg.connect(seed_dsn) as conn:
        conn.execute("DELETE FROM public.sales WHERE user_id > 100")
        conn.execute("DELETE FROM public.users WHERE id > 100")
        conn.execute(
            "UPDATE public.revetl_seed_runs SET users_done = 100, "
            "sales_done = (SELECT count(*) FROM public.sales), finished_at = NULL"
        )

    resumed = seed(seed_dsn, USERS, MAX_SALES, 42, UNTIL)

    expected = expected_sales()
    assert resumed.users_added == 100
    assert counts(seed_dsn) == (USERS, len(expected), sum(a for _, a in expected))
