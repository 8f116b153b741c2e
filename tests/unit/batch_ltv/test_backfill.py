"""Day ranges, month cuts, run records and class moves of the backfills."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from batch_ltv.backfill import (
    MAX_DAYS,
    BackfillRun,
    DayRange,
    TargetBackfill,
    count_moves,
    parse_day,
)


def test_one_day_range_is_one_day() -> None:
    days = DayRange.checked(date(2025, 3, 5), date(2025, 3, 5))
    assert days.days == 1
    assert days.months() == [days]


def test_reversed_range_names_both_flags() -> None:
    with pytest.raises(ValueError, match=r"--from 2025-03-06 is after --to 2025-03-05"):
        DayRange.checked(date(2025, 3, 6), date(2025, 3, 5))


def test_range_longer_than_the_limit_is_refused() -> None:
    first = date(2015, 1, 1)
    DayRange.checked(first, first + timedelta(days=MAX_DAYS - 1))
    with pytest.raises(ValueError, match="split it into several runs"):
        DayRange.checked(first, first + timedelta(days=MAX_DAYS))


def test_months_cut_at_month_ends_and_cover_every_day_once() -> None:
    days = DayRange.checked(date(2024, 1, 30), date(2024, 3, 2))
    months = days.months()
    assert [(m.first, m.last) for m in months] == [
        (date(2024, 1, 30), date(2024, 1, 31)),
        (date(2024, 2, 1), date(2024, 2, 29)),
        (date(2024, 3, 1), date(2024, 3, 2)),
    ]
    assert sum(m.days for m in months) == days.days == 33
    assert [m.month for m in months] == [202401, 202402, 202403]


def test_months_cross_the_year_end() -> None:
    months = DayRange.checked(date(2024, 12, 15), date(2025, 1, 10)).months()
    assert [(m.first, m.last) for m in months] == [
        (date(2024, 12, 15), date(2024, 12, 31)),
        (date(2025, 1, 1), date(2025, 1, 10)),
    ]
    assert [m.month for m in months] == [202412, 202501]


def test_a_whole_year_is_twelve_months() -> None:
    months = DayRange.checked(date(2025, 1, 1), date(2025, 12, 31)).months()
    assert len(months) == 12
    assert all(m.first.day == 1 for m in months)
    assert sum(m.days for m in months) == 365


def test_parse_day_names_the_flag() -> None:
    assert parse_day("2025-02-28", "--to") == date(2025, 2, 28)
    with pytest.raises(ValueError, match=r"--to '2025-02-30' is not a day"):
        parse_day("2025-02-30", "--to")


def _run(finished: datetime | None) -> BackfillRun:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return BackfillRun(
        id=7, kind="target", started_at=started, finished_at=finished, rows=12,
        outcome="succeeded", detail="d", params={"dry_run": False},
    )  # fmt: skip


def test_run_as_dict_is_json_with_its_duration() -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    data = _run(started + timedelta(seconds=2.5)).as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["seconds"] == 2.5
    assert data["started_at"] == "2026-01-02T03:04:05+00:00"
    assert _run(None).as_dict()["seconds"] is None


def test_moves_add_up_and_sort_by_count() -> None:
    moves = count_moves(
        [("B", "C", 3), ("A", "B", 5), ("B", "C", 4), (None, "A", 1), ("C", None, 1)]
    )
    assert moves == {("B", "C"): 7, ("A", "B"): 5, (None, "A"): 1, ("C", None): 1}
    result = TargetBackfill(
        run=_run(None), users=100, fresh=14, upserts=13, deletes=1, moves=moves,
        dry_run=True,
    )  # fmt: skip
    assert result.class_changes == 14
    assert result.moves_text() == [
        "B → C: 7",
        "A → B: 5",
        "(none) → A: 1",
        "C → (none): 1",
    ]
    summary = result.summary()
    assert summary["moves"] == [
        {"from": "B", "to": "C", "users": 7},
        {"from": "A", "to": "B", "users": 5},
        {"from": None, "to": "A", "users": 1},
        {"from": "C", "to": None, "users": 1},
    ]
    assert json.loads(json.dumps(summary)) == summary
