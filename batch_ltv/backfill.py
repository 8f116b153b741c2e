"""Backfill plans and results: day ranges, chunks, run records and class moves.

Pure: `batch_ltv.backfill_io` does the reading and writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

MAX_DAYS = 3_660
"""The longest range one history backfill takes (about ten years)."""

HISTORY = "history"
TARGET = "target"
KINDS = (HISTORY, TARGET)

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
DRY_RUN = "dry-run"
OUTCOMES = (RUNNING, SUCCEEDED, FAILED, DRY_RUN)


@dataclass(frozen=True)
class DayRange:
    """Execution days `first`..`last`, both included."""

    first: date
    last: date

    @classmethod
    def checked(
        cls,
        first: date,
        last: date,
        max_days: int = MAX_DAYS,
        labels: tuple[str, str] = ("--from ", "--to "),
    ) -> DayRange:
        """The range, or a ValueError naming the bad values by `labels`.

        The labels are how the caller's user typed the two days: CLI flags by
        default, `("from=", "to=")` for DAG params.
        """
        start, end = f"{labels[0]}{first}", f"{labels[1]}{last}"
        if first > last:
            message = (
                f"{start} is after {end}: give the first day, then the last day "
                "(both included)"
            )
            raise ValueError(message)
        days = (last - first).days + 1
        if days > max_days:
            message = (
                f"{start} {end} spans {days:,} days, more than the {max_days:,} one "
                "run takes: split it into several runs"
            )
            raise ValueError(message)
        return cls(first, last)

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def month(self) -> int:
        """The first day's month as YYYYMM, the history table's partition."""
        return self.first.year * 100 + self.first.month

    def months(self) -> list[DayRange]:
        """The range cut at month ends: one part per calendar month it touches."""
        parts = []
        start = self.first
        while start <= self.last:
            following = date(start.year + start.month // 12, start.month % 12 + 1, 1)
            end = min(following - timedelta(days=1), self.last)
            parts.append(DayRange(start, end))
            start = end + timedelta(days=1)
        return parts


def parse_day(text: str, flag: str) -> date:
    """A YYYY-MM-DD day, or a ValueError that names the flag."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        message = f"{flag} {text!r} is not a day in the form YYYY-MM-DD"
        raise ValueError(message) from exc


@dataclass(frozen=True)
class BackfillRun:
    """One backfill as recorded in the target's `backfill_runs` table."""

    id: int
    kind: str
    started_at: datetime
    finished_at: datetime | None
    rows: int
    outcome: str
    detail: str
    params: Mapping[str, object] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: timestamps as ISO 8601 text."""
        finished = None if self.finished_at is None else self.finished_at.isoformat()
        return {
            "id": self.id,
            "kind": self.kind,
            "started_at": self.started_at.isoformat(),
            "finished_at": finished,
            "seconds": self.seconds,
            "rows": self.rows,
            "outcome": self.outcome,
            "detail": self.detail,
            "params": dict(self.params),
        }


Move = tuple[str | None, str | None]
"""(old class, new class); None where a user appears or is deleted."""


@dataclass(frozen=True)
class TargetBackfill:
    """What `backfill target` did, or would do on a dry run."""

    run: BackfillRun
    users: int
    """Users read from ClickHouse (deleted ones included)."""
    fresh: int
    """Users whose product-DB row was (or would be) written."""
    upserts: int
    deletes: int
    moves: Mapping[Move, int]
    dry_run: bool

    @property
    def class_changes(self) -> int:
        return sum(self.moves.values())

    def moves_text(self) -> list[str]:
        """One `B → C: 12` line per move, the largest first."""
        return [
            f"{_label(old)} → {_label(new)}: {count:,}"
            for (old, new), count in sorted_moves(self.moves)
        ]

    def summary(self) -> dict[str, object]:
        return {
            "run": self.run.as_dict(),
            "dry_run": self.dry_run,
            "users": self.users,
            "fresh": self.fresh,
            "upserts": self.upserts,
            "deletes": self.deletes,
            "class_changes": self.class_changes,
            "moves": [
                {"from": old, "to": new, "users": count}
                for (old, new), count in sorted_moves(self.moves)
            ],
        }


def sorted_moves(moves: Mapping[Move, int]) -> list[tuple[Move, int]]:
    """Moves by count, largest first, then by class names."""
    return sorted(
        moves.items(), key=lambda item: (-item[1], item[0][0] or "", item[0][1] or "")
    )


def count_moves(rows: Iterable[tuple[str | None, str | None, int]]) -> dict[Move, int]:
    """Add up (old, new, count) rows into one count per move."""
    moves: dict[Move, int] = {}
    for old, new, count in rows:
        moves[(old, new)] = moves.get((old, new), 0) + count
    return moves


def _label(user_class: str | None) -> str:
    return "(none)" if user_class is None else user_class
