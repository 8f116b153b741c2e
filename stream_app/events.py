"""LTV-change messages from ClickHouse: strict parsing and per-user deduplication."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from services.errors import DeadLetterError

BIGINT_MAX = 2**63 - 1
"""The largest value a Postgres BIGINT column holds."""

TS_MS_MAX = 253_402_300_799_999
"""The last millisecond of year 9999, the last one a Python datetime can hold."""

INTEGER_FIELDS = ("user_id", "ltv", "sale_count", "source_lsn", "source_ts_ms")

QUOTED_INTEGER_HINT = (
    " (ClickHouse quotes 64-bit integers when output_format_json_quote_64bit_integers"
    "=1; set it to 0 on the sink table)"
)


@dataclass(frozen=True, slots=True)
class LtvEvent:
    """One user's current LTV as of a source commit; `source_lsn` orders versions."""

    user_id: int
    ltv: int
    sale_count: int
    source_lsn: int
    source_ts_ms: int
    user_deleted: bool

    @property
    def committed_at(self) -> datetime:
        """When the source transaction behind this version committed."""
        return datetime.fromtimestamp(self.source_ts_ms / 1000, tz=UTC)

    def stat_date(self, tz: tzinfo) -> date:
        """The calendar day of the source commit in the business time zone."""
        return self.committed_at.astimezone(tz).date()


def parse_event(raw: bytes | str | None) -> LtvEvent:
    """Parse one message value, or raise `DeadLetterError` saying what is wrong.

    Keys other than the six of the contract are ignored, so ClickHouse may add
    fields without breaking the worker.
    """
    if raw is None or len(raw) == 0:
        raise DeadLetterError("empty message value: expected a JSON object")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeadLetterError(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise DeadLetterError(f"expected a JSON object, got a JSON {kind}")
    values = {name: _integer(document, name) for name in INTEGER_FIELDS}
    if values["user_id"] < 1:
        raise DeadLetterError(f"user_id must be positive, got {values['user_id']}")
    return LtvEvent(user_deleted=_flag(document, "user_deleted"), **values)


def _integer(document: dict[str, Any], name: str) -> int:
    if name not in document:
        raise DeadLetterError(f"missing field {name}")
    value = document[name]
    if isinstance(value, bool) or not isinstance(value, int):
        hint = QUOTED_INTEGER_HINT if isinstance(value, str) else ""
        message = (
            f"field {name} must be a JSON integer, got "
            f"{type(value).__name__} {value!r}{hint}"
        )
        raise DeadLetterError(message)
    limit = TS_MS_MAX if name == "source_ts_ms" else BIGINT_MAX
    if not 0 <= value <= limit:
        raise DeadLetterError(f"field {name} must be in 0..{limit}, got {value}")
    return value


def _flag(document: dict[str, Any], name: str) -> bool:
    if name not in document:
        raise DeadLetterError(f"missing field {name}")
    value = document[name]
    if value in (0, 1) and isinstance(value, int):  # True and False are ints too
        return bool(value)
    raise DeadLetterError(f"field {name} must be 0 or 1, got {value!r}")


def latest_per_user(events: Iterable[LtvEvent]) -> list[LtvEvent]:
    """One event per user, the one with the highest source LSN (the later on ties).

    The result is sorted by user id, the order the target locks rows in.
    """
    latest: dict[int, LtvEvent] = {}
    for event in events:
        kept = latest.get(event.user_id)
        if kept is None or event.source_lsn >= kept.source_lsn:
            latest[event.user_id] = event
    return [latest[user_id] for user_id in sorted(latest)]


def printable(raw: bytes | str | None) -> str:
    """A message value as text a Postgres TEXT column accepts (no NUL bytes)."""
    if raw is None:
        return ""
    text = (
        raw.decode("utf-8", errors="backslashreplace")
        if isinstance(raw, bytes)
        else raw
    )
    return text.replace("\x00", "\\x00")
