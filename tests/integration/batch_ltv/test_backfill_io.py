"""Seeding, the history backfill and the target backfill on the live stack."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from pipeline_support import Pipeline, next_id

from batch_ltv.backfill_io import backfill_history, backfill_target, recent_runs
from batch_ltv.reconcile_io import reconcile
from batch_ltv.seed_io import seed
from services.config import Settings
from services.errors import FatalError
from services.stack import Stack
from stream_app.ranks import RankRules, default_rules, load_rules

pytestmark = pytest.mark.integration

SEED_USERS = 1_000
"""The plan of `make demo`, so a developer's stack after the demo takes it too."""
SEED = 42
RECONCILE_S = 300.0
MARCH_2019 = (date(2019, 3, 1), date(2019, 3, 31))
"""A month before any seeded or test user exists, so only this file's users."""

SOURCE_HISTORY_SQL = """
SELECT u.id, d::date,
    coalesce((
        SELECT sum(s.amount) FROM public.sales AS s
        WHERE s.user_id = u.id AND s.created_at < d
    ), 0)::bigint
FROM public.users AS u
CROSS JOIN generate_series(%s::timestamp, %s::timestamp, interval '1 day') AS d
WHERE u.created_at < d
"""
HISTORY_SQL = """
SELECT user_id, execution_day, ltv, user_class FROM dds.user_ltv_history
WHERE execution_day BETWEEN %(first)s AND %(last)s
"""
TARGET_DIGEST_SQL = """
SELECT count(*), md5(string_agg(
    concat_ws(',', user_id, ltv, user_class, discount_pct, source_lsn, stat_date),
    ';' ORDER BY user_id))
FROM public.user_ltv_history
"""

History = dict[tuple[int, date], int]


@pytest.fixture
def pipeline(stack: Stack) -> Iterator[Pipeline]:
    p = Pipeline(stack)
    yield p
    p.close()


def _agree(stack: Stack, rules: RankRules) -> None:
    report = reconcile(stack, rules, RECONCILE_S, lambda lag, r: None)
    assert report.agrees, (report.summary(), report.differences[:5])


def _source_history(pipeline: Pipeline, first: date, last: date) -> History:
    rows = pipeline.source.execute(SOURCE_HISTORY_SQL, (first, last)).fetchall()
    return {(int(u), d): int(ltv) for u, d, ltv in rows}


def _history(
    clickhouse: Client, first: date, last: date
) -> dict[tuple[int, date], tuple[int, str]]:
    rows = clickhouse.query(
        HISTORY_SQL, parameters={"first": first, "last": last}
    ).result_rows
    history = {(int(u), d): (int(ltv), str(c)) for u, d, ltv, c in rows}
    assert len(history) == len(rows), "a (user, day) appears twice"
    return history


def _user(pipeline: Pipeline, created_at: datetime) -> int:
    user_id = next_id()
    pipeline.source.execute(
        "INSERT INTO public.users (id, created_at, first_name, email) "
        "VALUES (%s, %s, 'Backfill', %s)",
        (user_id, created_at, f"b{user_id}@example.test"),
    )
    return user_id


def _sale(pipeline: Pipeline, user_id: int, created_at: datetime, amount: int) -> int:
    sale_id = next_id()
    pipeline.source.execute(
        "INSERT INTO public.sales (id, user_id, created_at, branch, amount) "
        "VALUES (%s, %s, %s, 7, %s)",
        (sale_id, user_id, created_at, amount),
    )
    return sale_id


def _recorded_plan(pipeline: Pipeline) -> tuple[int, int, int, date] | None:
    """The seed plan this source was seeded with, if any (demo, bench or a test)."""
    table = pipeline.source.execute("SELECT to_regclass('public.revetl_seed_runs')")
    if table.fetchone() == (None,):
        return None
    row = pipeline.source.execute(
        "SELECT users, max_sales_per_user, seed, until FROM public.revetl_seed_runs"
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]), row[3])


def test_seeded_users_stream_to_the_product_db(
    stack: Stack, pipeline: Pipeline
) -> None:
    # A fresh stack gets the demo's plan; a stack seeded before (`make demo`, the
    # backfill bench) is asked for its own plan again, which must add nothing.
    recorded = _recorded_plan(pipeline)
    users, max_sales, seed_value, until = recorded or (
        SEED_USERS,
        1_000,
        SEED,
        date(2025, 10, 13),
    )
    dsn = stack.source_pg.dsn()
    first = seed(dsn, users, max_sales, seed_value, until)
    assert first.users_added == (0 if recorded else SEED_USERS)
    again = seed(dsn, users, max_sales, seed_value, until)
    assert (again.users_added, again.sales_added) == (0, 0)
    _agree(stack, default_rules())


def test_history_month_equals_a_recompute_on_the_source(
    stack: Stack, settings: Settings, pipeline: Pipeline, clickhouse: Client
) -> None:
    early = _user(pipeline, datetime(2019, 2, 20, 9, 0))
    late = _user(pipeline, datetime(2019, 3, 10, 10, 0))
    gone = _user(pipeline, datetime(2019, 1, 1))
    heir = _user(pipeline, datetime(2019, 3, 1, 0, 0))
    _sale(pipeline, early, datetime(2019, 1, 15, 8, 0), 100_000)
    _sale(pipeline, early, datetime(2019, 3, 5, 12, 0), 2_000_000)
    _sale(pipeline, early, datetime(2019, 3, 5, 23, 59, 59), 50)
    _sale(pipeline, early, datetime(2019, 3, 31, 0, 0), 7)  # counts from April 1
    moved = _sale(pipeline, early, datetime(2019, 3, 20, 15, 0), 900_000)
    _sale(pipeline, late, datetime(2019, 3, 10, 11, 0), 6_000_000)
    dropped = _sale(pipeline, late, datetime(2019, 3, 15, 11, 0), 1_000)
    _sale(pipeline, gone, datetime(2019, 3, 2), 5_000)
    pipeline.source.execute(
        "UPDATE public.sales SET user_id = %s WHERE id = %s", (heir, moved)
    )
    pipeline.source.execute("DELETE FROM public.sales WHERE id = %s", (dropped,))
    pipeline.source.execute("DELETE FROM public.users WHERE id = %s", (gone,))
    _agree(stack, default_rules())

    run = backfill_history(settings, *MARCH_2019)

    mine = {early, late, gone, heir}
    expected = {
        key: ltv
        for key, ltv in _source_history(pipeline, *MARCH_2019).items()
        if key[0] in mine
    }
    history = _history(clickhouse, *MARCH_2019)
    assert {k: v[0] for k, v in history.items() if k[0] in mine} == expected
    for ltv, user_class in history.values():
        assert user_class == default_rules().class_for(ltv)[0]
    assert expected[(early, date(2019, 3, 5))] == 100_000
    assert expected[(early, date(2019, 3, 6))] == 2_100_050
    assert expected[(early, date(2019, 3, 31))] == 2_100_050
    assert expected[(heir, date(2019, 3, 21))] == 900_000
    assert (late, date(2019, 3, 10)) not in expected  # created that morning
    assert expected[(late, date(2019, 3, 11))] == 6_000_000
    assert not any(user == gone for user, _ in history)
    assert run.outcome == "succeeded"
    assert run.rows == len(history)


def test_history_run_again_replaces_the_range(
    stack: Stack, settings: Settings, pipeline: Pipeline, clickhouse: Client
) -> None:
    user = _user(pipeline, datetime(2019, 2, 1))
    sale = _sale(pipeline, user, datetime(2019, 3, 12, 10, 0), 1_500_000)
    _agree(stack, default_rules())
    backfill_history(settings, *MARCH_2019)
    before = _history(clickhouse, *MARCH_2019)
    assert before[(user, date(2019, 3, 13))] == (1_500_000, "B")

    pipeline.source.execute(
        "UPDATE public.sales SET amount = 5500000 WHERE id = %s", (sale,)
    )
    _agree(stack, default_rules())
    backfill_history(settings, date(2019, 3, 10), date(2019, 3, 20))
    after = _history(clickhouse, *MARCH_2019)

    assert after.keys() == before.keys()
    assert after[(user, date(2019, 3, 13))] == (5_500_000, "C")
    assert after[(user, date(2019, 3, 20))] == (5_500_000, "C")
    assert after[(user, date(2019, 3, 21))] == (1_500_000, "B")  # outside the range
    assert after[(user, date(2019, 3, 12))] == (0, "A")


def test_history_of_seeded_month_equals_the_source(
    settings: Settings, pipeline: Pipeline, clickhouse: Client
) -> None:
    first, last = date(2025, 3, 1), date(2025, 3, 31)
    backfill_history(settings, first, last)
    expected = _source_history(pipeline, first, last)
    history = _history(clickhouse, first, last)
    assert len(expected) >= SEED_USERS * 31
    assert {k: v[0] for k, v in history.items()} == expected


def _changed_rules(tmp_path: Path) -> RankRules:
    """The default rules with class C starting at 3,000,000 instead of 5,000,000."""
    text = default_rules().source.read_text(encoding="utf-8")
    assert "threshold_roubles = 5_000_000" in text
    path = tmp_path / "rules.toml"
    path.write_text(text.replace("= 5_000_000", "= 3_000_000"), encoding="utf-8")
    return load_rules(path)


def _target_digest(pipeline: Pipeline) -> tuple[object, ...]:
    row = pipeline.target.execute(TARGET_DIGEST_SQL).fetchone()
    changes = pipeline.target.execute("SELECT max(id) FROM public.rank_changes")
    return (row, changes.fetchone())


def test_target_dry_run_then_real_run_applies_changed_rules(
    stack: Stack, settings: Settings, pipeline: Pipeline, tmp_path: Path
) -> None:
    user = pipeline.add_user()
    pipeline.add_sale(user, 4_000_000)
    assert pipeline.wait_rank(user, 4_000_000) == (4_000_000, "B", 5)
    _agree(stack, default_rules())
    rules = _changed_rules(tmp_path)
    before = _target_digest(pipeline)

    try:
        dry = backfill_target(settings, dry_run=True, rules=rules)
        assert _target_digest(pipeline) == before
        assert pipeline.rank(user) == (4_000_000, "B", 5)
        assert dry.moves.get(("B", "C"), 0) >= 1
        assert set(dry.moves) == {("B", "C")}
        assert dry.run.outcome == "dry-run"

        real = backfill_target(settings, rules=rules)
        assert real.moves == dry.moves
        assert pipeline.rank(user) == (4_000_000, "C", 10)
        assert pipeline.history(user)[-1] == ("B", "C", 4_000_000)
        _agree(stack, rules)
    finally:
        back = backfill_target(settings)
    assert back.moves == {("C", "B"): dry.moves[("B", "C")]}
    assert pipeline.rank(user) == (4_000_000, "B", 5)
    _agree(stack, default_rules())
    outcomes = [(r.kind, r.outcome) for r in recent_runs(settings, 3)]
    assert outcomes == [
        ("target", "succeeded"),
        ("target", "succeeded"),
        ("target", "dry-run"),
    ]


def test_target_never_overwrites_a_newer_row(
    stack: Stack, settings: Settings, pipeline: Pipeline
) -> None:
    user = pipeline.add_user()
    pipeline.add_sale(user, 2_000_000)
    assert pipeline.wait_rank(user, 2_000_000) is not None
    _agree(stack, default_rules())
    pipeline.target.execute(
        "UPDATE public.user_ltv_history SET ltv = 1, source_lsn = source_lsn + %s "
        "WHERE user_id = %s",
        (10**12, user),
    )

    backfill_target(settings)
    assert pipeline.rank(user) == (1, "B", 5)

    pipeline.target.execute(
        "UPDATE public.user_ltv_history SET source_lsn = 0 WHERE user_id = %s", (user,)
    )
    repaired = backfill_target(settings)
    assert pipeline.rank(user) == (2_000_000, "B", 5)
    assert repaired.fresh >= 1
    _agree(stack, default_rules())


def test_a_failed_backfill_is_recorded(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"clickhouse_url": "http://127.0.0.1:9"})
    with pytest.raises(FatalError, match=r"backfill #\d+ \(target\) failed: .*:9"):
        backfill_target(unreachable, dry_run=True)
    last = recent_runs(settings, 1)[0]
    assert (last.kind, last.outcome) == ("target", "failed")
    assert last.finished_at is not None
    assert "127.0.0.1" in last.detail
