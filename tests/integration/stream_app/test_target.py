"""The target adapter against the real product Postgres: the LSN guard and history."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from services.errors import ConfigurationError, FatalError, RetriableError
from services.process import tcp_open
from services.stack import Stack
from stream_app import ranks, target
from stream_app.events import LtvEvent
from stream_app.target import BatchResult, DeadLetter, TargetWriter

MOSCOW = ZoneInfo("Europe/Moscow")
COMMITTED_MS = 1_760_000_000_000  # 2025-10-09 08:53:20 UTC


def ev(user_id: int, lsn: int, ltv: int = 0, deleted: bool = False) -> LtvEvent:
    return LtvEvent(user_id, ltv, 1, lsn, COMMITTED_MS + lsn, deleted)


def write(
    conn: target.Connection,
    schema: str,
    *events: LtvEvent,
    letters: tuple[DeadLetter, ...] = (),
) -> BatchResult:
    rows = target.rank_rows(events, ranks.default_rules(), MOSCOW)
    return target.write_batch(conn, schema, rows, letters)


def query(conn: target.Connection, schema: str, text: str, *args: Any) -> list[Any]:
    statement = sql.SQL(text).format(s=sql.Identifier(schema))
    return conn.execute(statement, args).fetchall()


def run(conn: target.Connection, schema: str, text: str) -> None:
    conn.execute(sql.SQL(text).format(s=sql.Identifier(schema)))


def ranked(
    conn: target.Connection, schema: str, user_id: int
) -> tuple[Any, ...] | None:
    rows = query(
        conn,
        schema,
        "SELECT ltv, user_class, discount_pct, source_lsn FROM {s}.user_ltv_history "
        "WHERE user_id = %s",
        user_id,
    )
    return rows[0] if rows else None


def history(
    conn: target.Connection, schema: str, user_id: int
) -> list[tuple[Any, ...]]:
    return query(
        conn,
        schema,
        "SELECT old_class, new_class, ltv, source_lsn FROM {s}.rank_changes "
        "WHERE user_id = %s ORDER BY id",
        user_id,
    )


def tombstone(conn: target.Connection, schema: str, user_id: int) -> int | None:
    rows = query(
        conn,
        schema,
        "SELECT source_lsn FROM {s}.user_ltv_tombstones WHERE user_id = %s",
        user_id,
    )
    return int(rows[0][0]) if rows else None


def updated_at(conn: target.Connection, schema: str, user_id: int) -> datetime:
    rows = query(
        conn,
        schema,
        "SELECT updated_at FROM {s}.user_ltv_history WHERE user_id = %s",
        user_id,
    )
    return rows[0][0]  # type: ignore[no-any-return]  # a timestamptz column


@pytest.fixture
def writer(stack: Stack, schema: str) -> Iterator[TargetWriter]:
    writer = TargetWriter(stack.target_pg.dsn(), schema, lock_timeout_s=0.3)
    yield writer
    writer.close()


def test_the_schema_is_applied_idempotently(
    target_conn: target.Connection, schema: str
) -> None:
    target.apply_schema(target_conn, schema)
    target.apply_schema(target_conn, schema)

    tables = query(
        target_conn,
        schema,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name",
        schema,
    )
    assert [t[0] for t in tables] == [
        "dead_letters", "rank_changes", "user_ltv_history", "user_ltv_tombstones",
    ]  # fmt: skip
    columns = query(
        target_conn,
        schema,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'user_ltv_history' "
        "ORDER BY ordinal_position",
        schema,
    )
    assert columns == [
        ("user_id", "bigint"),
        ("stat_date", "date"),
        ("ltv", "bigint"),
        ("user_class", "text"),
        ("discount_pct", "smallint"),
        ("source_lsn", "bigint"),
        ("updated_at", "timestamp with time zone"),
    ]


def test_the_original_four_column_table_is_reported(
    target_conn: target.Connection, unique: str
) -> None:
    legacy = f"revetl_test_legacy_{unique}"
    target_conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(legacy)))
    try:
        run(
            target_conn,
            legacy,
            "CREATE TABLE {s}.user_ltv_history (user_id BIGINT PRIMARY KEY, "
            "stat_date DATE, ltv BIGINT, user_class TEXT)",
        )
        with pytest.raises(ConfigurationError, match="discount_pct, source_lsn"):
            target.apply_schema(target_conn, legacy)
    finally:
        target_conn.execute(
            sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(legacy))
        )


def test_a_schema_name_outside_the_allow_list_is_refused(
    target_conn: target.Connection,
) -> None:
    with pytest.raises(ConfigurationError, match="REVETL_TARGET_SCHEMA"):
        target.apply_schema(target_conn, 'x"; DROP TABLE y; --')


def test_first_appearance_writes_the_row_and_history(
    target_conn: target.Connection, schema: str
) -> None:
    result = write(target_conn, schema, ev(1, 10, 1_500_000))

    assert ranked(target_conn, schema, 1) == (1_500_000, "B", 5, 10)
    assert history(target_conn, schema, 1) == [(None, "B", 1_500_000, 10)]
    assert (result.upserts, result.rank_changes, result.stale) == (1, 1, 0)
    stat = query(
        target_conn,
        schema,
        "SELECT stat_date FROM {s}.user_ltv_history WHERE user_id = 1",
    )
    assert stat == [(date(2025, 10, 9),)]


def test_a_newer_event_wins_and_a_class_change_is_recorded(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 1_500_000))

    result = write(target_conn, schema, ev(1, 20, 6_000_000))

    assert ranked(target_conn, schema, 1) == (6_000_000, "C", 10, 20)
    assert history(target_conn, schema, 1) == [
        (None, "B", 1_500_000, 10),
        ("B", "C", 6_000_000, 20),
    ]
    assert (result.upserts, result.rank_changes) == (1, 1)


def test_an_older_event_never_overwrites_a_newer_row(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 20, 6_000_000))

    result = write(target_conn, schema, ev(1, 15, 100))

    assert ranked(target_conn, schema, 1) == (6_000_000, "C", 10, 20)
    assert history(target_conn, schema, 1) == [(None, "C", 6_000_000, 20)]
    assert (result.stale, result.upserts, result.rank_changes) == (1, 0, 0)


def test_a_snapshot_message_with_the_same_lsn_and_more_sales_wins(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 30, 900_000))

    result = write(target_conn, schema, ev(1, 30, 1_200_000))

    assert ranked(target_conn, schema, 1) == (1_200_000, "B", 5, 30)
    assert history(target_conn, schema, 1) == [
        (None, "A", 900_000, 30),
        ("A", "B", 1_200_000, 30),
    ]
    assert (result.stale, result.upserts, result.rank_changes) == (0, 1, 1)


def test_a_duplicate_is_harmless(target_conn: target.Connection, schema: str) -> None:
    write(target_conn, schema, ev(1, 10, 1_500_000))
    before = updated_at(target_conn, schema, 1)

    result = write(target_conn, schema, ev(1, 10, 1_500_000))

    assert ranked(target_conn, schema, 1) == (1_500_000, "B", 5, 10)
    assert updated_at(target_conn, schema, 1) == before
    assert len(history(target_conn, schema, 1)) == 1
    assert (result.stale, result.upserts) == (1, 0)


def test_the_same_lsn_and_ltv_under_other_rules_is_a_re_rank(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 4_000_000))
    rules = ranks.parse_rules(
        {"rank": [
            {"class": "A", "threshold_roubles": 0, "discount_pct": 0},
            {"class": "C", "threshold_roubles": 3_000_000, "discount_pct": 10},
        ]},
        Path("test.toml"),
    )  # fmt: skip
    rows = target.rank_rows([ev(1, 10, 4_000_000)], rules, MOSCOW)

    result = target.write_batch(target_conn, schema, rows)

    assert ranked(target_conn, schema, 1) == (4_000_000, "C", 10, 10)
    assert history(target_conn, schema, 1)[-1] == ("B", "C", 4_000_000, 10)
    assert (result.stale, result.upserts, result.rank_changes) == (0, 1, 1)


def test_a_delete_with_the_row_s_own_lsn_changes_nothing(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 1_500_000))

    result = write(target_conn, schema, ev(1, 10, 0, deleted=True))

    assert ranked(target_conn, schema, 1) == (1_500_000, "B", 5, 10)
    assert tombstone(target_conn, schema, 1) is None
    assert len(history(target_conn, schema, 1)) == 1
    assert result.stale == 1


def test_a_bulk_dry_run_counts_moves_and_writes_nothing(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 500_000), ev(2, 10, 1_500_000))
    rows = target.rank_rows(
        [ev(1, 11, 1_100_000), ev(2, 11, 5_100_000), ev(3, 11, 0)],
        ranks.default_rules(),
        MOSCOW,
    )

    dry = target.write_bulk(target_conn, schema, rows, dry_run=True)

    assert ranked(target_conn, schema, 1) == (500_000, "A", 0, 10)
    assert ranked(target_conn, schema, 3) is None
    assert sorted(dry.moves, key=str) == [
        ("A", "B", 1),
        ("B", "C", 1),
        (None, "A", 1),
    ]
    real = target.write_bulk(target_conn, schema, rows)
    assert real == dry
    assert ranked(target_conn, schema, 2) == (5_100_000, "C", 10, 11)


def test_an_ltv_change_within_the_class_updates_without_history(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 1_500_000))
    before = updated_at(target_conn, schema, 1)

    write(target_conn, schema, ev(1, 11, 1_600_000))

    assert ranked(target_conn, schema, 1) == (1_600_000, "B", 5, 11)
    assert updated_at(target_conn, schema, 1) > before
    assert len(history(target_conn, schema, 1)) == 1


def test_a_newer_event_without_change_only_advances_the_lsn(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 1_500_000))
    before = updated_at(target_conn, schema, 1)

    result = write(target_conn, schema, ev(1, 30, 1_500_000))

    assert ranked(target_conn, schema, 1) == (1_500_000, "B", 5, 30)
    assert updated_at(target_conn, schema, 1) == before
    assert (result.rank_changes, len(history(target_conn, schema, 1))) == (0, 1)

    # The advanced LSN is what refuses an event older than the no-op one.
    write(target_conn, schema, ev(1, 25, 9_000_000))
    assert ranked(target_conn, schema, 1) == (1_500_000, "B", 5, 30)


def test_a_batch_keeps_the_highest_lsn_of_each_user(
    target_conn: target.Connection, schema: str
) -> None:
    result = write(
        target_conn,
        schema,
        ev(1, 7, 6_000_000),
        ev(2, 3, 10),
        ev(1, 5, 1_000_000),
        ev(2, 4, 20),
    )

    assert ranked(target_conn, schema, 1) == (6_000_000, "C", 10, 7)
    assert ranked(target_conn, schema, 2) == (20, "A", 0, 4)
    assert history(target_conn, schema, 1) == [(None, "C", 6_000_000, 7)]
    assert result.events == 2


def test_delete_removes_the_row_and_a_stale_event_cannot_resurrect_it(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 1_500_000))

    deleted = write(target_conn, schema, ev(1, 20, 0, deleted=True))

    assert ranked(target_conn, schema, 1) is None
    assert tombstone(target_conn, schema, 1) == 20
    assert history(target_conn, schema, 1)[-1] == ("B", None, 0, 20)
    assert (deleted.deletes, deleted.rank_changes) == (1, 1)

    stale = write(target_conn, schema, ev(1, 15, 2_000_000))

    assert ranked(target_conn, schema, 1) is None
    assert tombstone(target_conn, schema, 1) == 20
    assert len(history(target_conn, schema, 1)) == 2
    assert stale.stale == 1


def test_a_later_event_undeletes_the_user(
    target_conn: target.Connection, schema: str
) -> None:
    write(target_conn, schema, ev(1, 10, 1_500_000))
    write(target_conn, schema, ev(1, 20, 0, deleted=True))

    result = write(target_conn, schema, ev(1, 30, 5_500_000))

    assert ranked(target_conn, schema, 1) == (5_500_000, "C", 10, 30)
    assert tombstone(target_conn, schema, 1) is None
    assert history(target_conn, schema, 1) == [
        (None, "B", 1_500_000, 10),
        ("B", None, 0, 20),
        (None, "C", 5_500_000, 30),
    ]
    assert (result.undeletes, result.rank_changes) == (1, 1)


def test_a_stale_delete_is_ignored(target_conn: target.Connection, schema: str) -> None:
    write(target_conn, schema, ev(1, 30, 1_500_000))

    result = write(target_conn, schema, ev(1, 20, 0, deleted=True))

    assert ranked(target_conn, schema, 1) == (1_500_000, "B", 5, 30)
    assert tombstone(target_conn, schema, 1) is None
    assert result.stale == 1


def test_deleting_an_unknown_user_leaves_a_tombstone_and_no_history(
    target_conn: target.Connection, schema: str
) -> None:
    result = write(target_conn, schema, ev(7, 50, 0, deleted=True))
    write(target_conn, schema, ev(7, 40, 3_000_000))

    assert ranked(target_conn, schema, 7) is None
    assert tombstone(target_conn, schema, 7) == 50
    assert history(target_conn, schema, 7) == []
    assert (result.tombstones, result.rank_changes) == (1, 0)


def test_dead_letters_are_written_with_the_batch(
    target_conn: target.Connection, schema: str
) -> None:
    letter = DeadLetter("revetl.ltv", 1, 99, "not json \\x00", "not valid JSON: x")

    result = write(target_conn, schema, ev(1, 10, 5), letters=(letter,))

    rows = query(
        target_conn,
        schema,
        'SELECT topic, partition, "offset", raw, reason FROM {s}.dead_letters',
    )
    assert rows == [("revetl.ltv", 1, 99, "not json \\x00", "not valid JSON: x")]
    assert ranked(target_conn, schema, 1) == (5, "A", 0, 10)
    assert result.dead_letters == 1


def test_a_failing_batch_writes_nothing(
    target_conn: target.Connection, schema: str
) -> None:
    # A partition number past INTEGER makes the last statement of the batch fail.
    letter = DeadLetter("revetl.ltv", 2**40, 1, "x", "y")

    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        write(target_conn, schema, ev(1, 10, 5), letters=(letter,))

    assert ranked(target_conn, schema, 1) is None
    assert history(target_conn, schema, 1) == []


def test_a_thousand_user_batch_is_written_whole(
    target_conn: target.Connection, schema: str
) -> None:
    events = [ev(user, 100, user * 100_000) for user in range(1, 1001)]

    result = write(target_conn, schema, *events)

    counts = query(
        target_conn,
        schema,
        "SELECT count(*), count(DISTINCT user_class) FROM {s}.user_ltv_history",
    )
    assert counts == [(1000, 7)]
    assert (result.upserts, result.rank_changes) == (1000, 1000)


def test_the_commit_time_and_stat_date_come_from_the_source(
    target_conn: target.Connection, schema: str
) -> None:
    # 21:30 UTC is already the next day in Moscow.
    late_ms = int(datetime(2025, 10, 12, 21, 30, tzinfo=UTC).timestamp() * 1000)

    write(target_conn, schema, LtvEvent(3, 10, 1, 5, late_ms, False))

    rows = query(
        target_conn,
        schema,
        "SELECT h.stat_date, c.source_committed_at FROM {s}.user_ltv_history h "
        "JOIN {s}.rank_changes c USING (user_id)",
    )
    assert rows == [(date(2025, 10, 13), datetime(2025, 10, 12, 21, 30, tzinfo=UTC))]


def test_the_writer_reports_an_unreachable_target_as_retriable(
    stack: Stack, schema: str
) -> None:
    port = 1
    assert not tcp_open("127.0.0.1", port)
    dsn = psycopg.conninfo.make_conninfo(stack.target_pg.dsn(), port=port)
    writer = TargetWriter(dsn, schema)

    with pytest.raises(RetriableError, match="target Postgres unavailable"):
        writer.write([])


def test_a_held_writer_lock_is_retriable_and_clears(
    stack: Stack, writer: TargetWriter, schema: str
) -> None:
    rows = target.rank_rows([ev(1, 10, 5)], ranks.default_rules(), MOSCOW)
    writer.connect()
    with (
        psycopg.connect(stack.target_pg.dsn(), autocommit=True) as other,
        other.transaction(),
    ):
        target.lock_target(other, schema)
        with pytest.raises(RetriableError, match="lock timeout"):
            writer.write(rows)

    assert writer.write(rows).upserts == 1


def test_a_missing_table_is_fatal(
    target_conn: target.Connection, writer: TargetWriter, schema: str
) -> None:
    writer.connect()
    run(target_conn, schema, "DROP TABLE {s}.rank_changes")
    rows = target.rank_rows([ev(1, 10, 5)], ranks.default_rules(), MOSCOW)

    with pytest.raises(FatalError, match="rank_changes"):
        writer.write(rows)
