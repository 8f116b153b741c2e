"""LTV messages: strict parsing into events, dead-letter reasons, deduplication."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.errors import DeadLetterError
from stream_app.events import LtvEvent, latest_per_user, parse_event, printable

GOOD: dict[str, Any] = {
    "user_id": 42,
    "ltv": 1_234_567,
    "sale_count": 17,
    "source_lsn": 987_654_321,
    "source_ts_ms": 1_760_000_000_123,
    "user_deleted": 0,
}


def message(**changes: Any) -> bytes:
    document = {**GOOD, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def event(user_id: int, lsn: int, ltv: int = 0) -> LtvEvent:
    return LtvEvent(user_id, ltv, 1, lsn, 1_760_000_000_000, False)


def test_a_good_message_becomes_an_event() -> None:
    parsed = parse_event(message())

    assert parsed == LtvEvent(42, 1_234_567, 17, 987_654_321, 1_760_000_000_123, False)


def test_text_and_bytes_parse_alike() -> None:
    assert parse_event(message().decode()) == parse_event(message())


@pytest.mark.parametrize(("flag", "deleted"), [(0, False), (1, True), (True, True)])
def test_user_deleted_is_a_flag(flag: object, deleted: bool) -> None:
    assert parse_event(message(user_deleted=flag)).user_deleted is deleted


def test_unknown_keys_are_ignored() -> None:
    assert parse_event(message(branch=7, note="x")) == parse_event(message())


def test_the_commit_time_is_utc_and_stat_date_follows_the_business_zone() -> None:
    # 21:30 UTC on 12 October is 00:30 on 13 October in Moscow.
    late = datetime(2025, 10, 12, 21, 30, tzinfo=UTC)
    parsed = parse_event(message(source_ts_ms=int(late.timestamp() * 1000)))

    assert parsed.committed_at == late
    assert parsed.stat_date(ZoneInfo("Europe/Moscow")) == date(2025, 10, 13)
    assert parsed.stat_date(UTC) == date(2025, 10, 12)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message value"),
        (b"", "empty message value"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"user_id": 1,', "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got a JSON list"),
        (b'"text"', "expected a JSON object, got a JSON str"),
        (message(user_id=...), "missing field user_id"),
        (message(ltv=...), "missing field ltv"),
        (message(sale_count=...), "missing field sale_count"),
        (message(source_lsn=...), "missing field source_lsn"),
        (message(source_ts_ms=...), "missing field source_ts_ms"),
        (message(user_deleted=...), "missing field user_deleted"),
        (message(ltv="5"), "field ltv must be a JSON integer, got str '5'"),
        (message(ltv=5.0), "field ltv must be a JSON integer, got float 5.0"),
        (message(ltv=None), "field ltv must be a JSON integer, got NoneType None"),
        (message(sale_count=True), "field sale_count must be a JSON integer, got bool"),
        (message(ltv=-1), "field ltv must be in 0..9223372036854775807, got -1"),
        (message(source_lsn=-5), "field source_lsn must be in 0.."),
        (message(source_lsn=2**63), "field source_lsn must be in 0.."),
        (
            message(source_ts_ms=10**17),
            "field source_ts_ms must be in 0..253402300799999",
        ),
        (message(user_id=0), "user_id must be positive, got 0"),
        (message(user_deleted=2), "field user_deleted must be 0 or 1, got 2"),
        (message(user_deleted="1"), "field user_deleted must be 0 or 1, got '1'"),
        (message(user_deleted=1.0), "field user_deleted must be 0 or 1, got 1.0"),
    ],
)
def test_malformed_messages_raise_a_dead_letter_error_with_the_reason(
    raw: bytes | None, reason: str
) -> None:
    with pytest.raises(DeadLetterError) as caught:
        parse_event(raw)

    assert reason in str(caught.value)


def test_a_quoted_integer_points_at_the_clickhouse_setting() -> None:
    with pytest.raises(DeadLetterError, match="output_format_json_quote_64bit"):
        parse_event(message(user_id="42"))


def test_the_newest_version_of_each_user_is_kept_in_any_order() -> None:
    batch = [event(2, 5, 50), event(1, 9, 90), event(2, 7, 70), event(1, 3, 30)]

    assert latest_per_user(batch) == [event(1, 9, 90), event(2, 7, 70)]
    assert latest_per_user(reversed(batch)) == [event(1, 9, 90), event(2, 7, 70)]


def test_on_equal_lsn_the_later_message_wins() -> None:
    assert latest_per_user([event(1, 4, 10), event(1, 4, 20)]) == [event(1, 4, 20)]


def test_an_empty_batch_stays_empty() -> None:
    assert latest_per_user([]) == []


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (None, ""),
        (b"plain", "plain"),
        (b"a\x00b", "a\\x00b"),
        (b"bad \xff byte", "bad \\xff byte"),
        ("caf\u00e9", "caf\u00e9"),
    ],
)
def test_printable_gives_text_postgres_accepts(
    raw: bytes | str | None, text: str
) -> None:
    assert printable(raw) == text
