"""The ClickHouse LTV pipeline in chDB: exact LTVs, messages, dead letters."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chdb.session import Session

from connectors.clickhouse_schema import (
    DEAD_LETTERS_TABLE,
    LANDING_TABLE,
    PLAIN_SINK_TABLE,
    PipelineParams,
    apply_pipeline,
    current_ltv_query,
    ods_ltv_query,
)

pytestmark = pytest.mark.integration

USERS = "oltp.public.users"
SALES = "oltp.public.sales"
TS0 = 1_760_000_000_000
CREATED_AT_US = 1_720_000_000_000_000

Row = dict[str, Any]
Message = dict[str, Any]


class ChdbCommander:
    """The one method of clickhouse-connect's Client that apply_pipeline needs."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def command(self, cmd: str) -> object:
        return self._session.query(cmd)


@dataclass
class Pipeline:
    """The pipeline in a chDB session: feed blocks, read what it emitted and stored."""

    session: Session
    emitted: list[Message] = field(default_factory=list)

    def send(self, *messages: Message, settings: str = "") -> list[Message]:
        """Insert one block into the landing table; the sink's rows for it, by user."""
        self.session.query(f"TRUNCATE TABLE {PLAIN_SINK_TABLE}")
        body = "\n".join(json.dumps(m) for m in messages)
        self.session.query(
            f"INSERT INTO {LANDING_TABLE} (topic, `offset`, raw, kafka_error) "
            f"{settings} FORMAT JSONEachRow\n{body}"
        )
        out = self.rows(
            "SELECT user_id, ltv, sale_count, source_lsn, source_ts_ms, user_deleted "
            f"FROM {PLAIN_SINK_TABLE} ORDER BY user_id, emitted_at"
        )
        self.emitted.extend(out)
        return out

    def rows(self, query: str) -> list[Message]:
        text = str(
            self.session.query(
                f"{query} SETTINGS output_format_json_quote_64bit_integers = 0",
                "JSONEachRow",
            )
        )
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def ltv(self) -> dict[int, tuple[int, int, int]]:
        """user_id -> (ltv, sale_count, user_deleted) from the reconciliation query."""
        return {
            r["user_id"]: (r["ltv"], r["sale_count"], r["user_deleted"])
            for r in self.rows(current_ltv_query())
        }

    def ods_ltv(self) -> dict[int, tuple[int, int]]:
        return {
            r["user_id"]: (r["ltv"], r["sale_count"])
            for r in self.rows(ods_ltv_query())
        }

    def dead_letters(self) -> list[Message]:
        return self.rows(
            "SELECT topic, `partition`, `offset`, raw, error "
            f"FROM {DEAD_LETTERS_TABLE} ORDER BY `offset`"
        )

    def current_sales(self) -> dict[int, tuple[int, int]]:
        """sale id -> (user_id, amount) of the live sales in revetl.sales FINAL."""
        rows = self.rows("SELECT id, user_id, amount FROM revetl.sales FINAL")
        return {r["id"]: (r["user_id"], r["amount"]) for r in rows}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    path: Path = tmp_path_factory.mktemp("chdb")
    chdb_session = Session(str(path))
    yield chdb_session
    chdb_session.close()


@pytest.fixture
def pipeline(session: Session) -> Pipeline:
    # DROP ... SYNC never returns in chDB 3.7.2; the plain drop frees the name at once.
    session.query("DROP DATABASE IF EXISTS revetl")
    apply_pipeline(ChdbCommander(session), PipelineParams(), use_kafka=False)
    return Pipeline(session)


def envelope(
    op: str, lsn: int, before: Row | None, after: Row | None, tx: int = 1
) -> str:
    source = {
        "version": "3.6.1.Final",
        "connector": "postgresql",
        "name": "oltp",
        "ts_ms": TS0 + lsn,
        "snapshot": "true" if op == "r" else "false",
        "db": "oltp",
        "schema": "public",
        "txId": tx,
        "lsn": lsn,
    }
    document = {"before": before, "after": after, "source": source, "op": op}
    return json.dumps({**document, "ts_ms": TS0 + lsn + 5})


def message(topic: str, raw: str, offset: int = 0, kafka_error: str = "") -> Message:
    return {"topic": topic, "offset": offset, "raw": raw, "kafka_error": kafka_error}


def sale(sale_id: int, user_id: int, amount: int, branch: int = 7) -> Row:
    return {
        "id": sale_id,
        "user_id": user_id,
        "created_at": CREATED_AT_US,
        "branch": branch,
        "amount": amount,
    }


def user(user_id: int, email: str | None = None) -> Row:
    return {
        "id": user_id,
        "created_at": CREATED_AT_US,
        "first_name": "Ivan",
        "last_name": "Petrov",
        "middle_name": None,
        "birthday": 9000,
        "email": email or f"user{user_id}@example.com",
    }


def sale_event(
    op: str, lsn: int, before: Row | None = None, after: Row | None = None, tx: int = 1
) -> Message:
    return message(SALES, envelope(op, lsn, before, after, tx))


def user_event(
    op: str, lsn: int, before: Row | None = None, after: Row | None = None, tx: int = 1
) -> Message:
    return message(USERS, envelope(op, lsn, before, after, tx))


def out(user_id: int, ltv: int, sale_count: int, lsn: int, deleted: int = 0) -> Message:
    """The message the sink must carry for a user."""
    return {
        "user_id": user_id,
        "ltv": ltv,
        "sale_count": sale_count,
        "source_lsn": lsn,
        "source_ts_ms": TS0 + lsn,
        "user_deleted": deleted,
    }


SNAPSHOT_LSN = 100


def seed(pipeline: Pipeline) -> list[Message]:
    """Users 1-3 and sales 10, 11 (user 1) and 12 (user 2) as one snapshot block."""
    return pipeline.send(
        *(user_event("r", SNAPSHOT_LSN, after=user(u)) for u in (1, 2, 3)),
        sale_event("r", SNAPSHOT_LSN, after=sale(10, 1, 500)),
        sale_event("r", SNAPSHOT_LSN, after=sale(11, 1, 700)),
        sale_event("r", SNAPSHOT_LSN, after=sale(12, 2, 300)),
    )


# The scenarios of the contract, each asserting the LTV state and the messages.


def test_snapshot_gives_every_user_its_ltv(pipeline: Pipeline) -> None:
    emitted = seed(pipeline)

    assert emitted == [
        out(1, 1200, 2, SNAPSHOT_LSN),
        out(2, 300, 1, SNAPSHOT_LSN),
        out(3, 0, 0, SNAPSHOT_LSN),
    ]
    assert pipeline.ltv() == {1: (1200, 2, 0), 2: (300, 1, 0), 3: (0, 0, 0)}
    assert pipeline.ods_ltv() == {1: (1200, 2), 2: (300, 1)}


def test_insert_raises_the_owner_only(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(sale_event("c", 110, after=sale(13, 3, 250)))

    assert emitted == [out(3, 250, 1, 110)]
    assert pipeline.ltv() == {1: (1200, 2, 0), 2: (300, 1, 0), 3: (250, 1, 0)}


def test_amount_update(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(
        sale_event("u", 120, before=sale(10, 1, 500), after=sale(10, 1, 800))
    )

    assert emitted == [out(1, 1500, 2, 120)]
    assert pipeline.ltv()[1] == (1500, 2, 0)
    assert pipeline.current_sales()[10] == (1, 800)


def test_sale_moved_to_another_user_emits_both(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(
        sale_event("u", 130, before=sale(11, 1, 700), after=sale(11, 2, 700))
    )

    assert emitted == [out(1, 500, 1, 130), out(2, 1000, 2, 130)]
    assert pipeline.ltv() == {1: (500, 1, 0), 2: (1000, 2, 0), 3: (0, 0, 0)}
    assert pipeline.current_sales() == {10: (1, 500), 11: (2, 700), 12: (2, 300)}


def test_sale_moved_back_to_its_first_owner(pipeline: Pipeline) -> None:
    seed(pipeline)
    pipeline.send(sale_event("u", 130, before=sale(11, 1, 700), after=sale(11, 2, 700)))

    emitted = pipeline.send(
        sale_event("u", 131, before=sale(11, 2, 700), after=sale(11, 1, 750))
    )

    assert emitted == [out(1, 1250, 2, 131), out(2, 300, 1, 131)]
    assert pipeline.ods_ltv() == {1: (1250, 2), 2: (300, 1)}


def test_sale_delete(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(sale_event("d", 140, before=sale(10, 1, 500)))

    assert emitted == [out(1, 700, 1, 140)]
    assert pipeline.ltv()[1] == (700, 1, 0)
    assert 10 not in pipeline.current_sales()


def test_deleting_the_last_sale_gives_zero(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(sale_event("d", 140, before=sale(12, 2, 300)))

    assert emitted == [out(2, 0, 0, 140)]
    assert pipeline.ltv()[2] == (0, 0, 0)
    assert 2 not in pipeline.ods_ltv()


def test_a_deleted_sale_id_can_come_back(pipeline: Pipeline) -> None:
    seed(pipeline)
    pipeline.send(sale_event("d", 140, before=sale(12, 2, 300)))

    emitted = pipeline.send(sale_event("c", 150, after=sale(12, 3, 90)))

    assert emitted == [out(2, 0, 0, 150), out(3, 90, 1, 150)]


def test_user_delete_flags_the_user_and_keeps_its_sales(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(user_event("d", 150, before=user(1)))

    assert emitted == [out(1, 1200, 2, 150, deleted=1)]
    assert pipeline.ltv()[1] == (1200, 2, 1)
    remaining = pipeline.rows("SELECT id FROM revetl.users FINAL ORDER BY id")
    assert remaining == [{"id": 2}, {"id": 3}]


def test_a_deleted_users_sales_still_count_and_a_new_insert_clears_the_flag(
    pipeline: Pipeline,
) -> None:
    seed(pipeline)
    pipeline.send(user_event("d", 150, before=user(1)))

    after_sale_delete = pipeline.send(sale_event("d", 160, before=sale(10, 1, 500)))
    after_recreate = pipeline.send(user_event("c", 170, after=user(1)))

    assert after_sale_delete == [out(1, 700, 1, 160, deleted=1)]
    assert after_recreate == [out(1, 700, 1, 170)]
    assert pipeline.ltv()[1] == (700, 1, 0)


def test_a_new_user_without_sales_gets_zero(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(user_event("c", 180, after=user(4)))

    assert emitted == [out(4, 0, 0, 180)]


def test_a_sale_of_an_unknown_user_counts(pipeline: Pipeline) -> None:
    emitted = pipeline.send(sale_event("c", 190, after=sale(50, 99, 4000)))

    assert emitted == [out(99, 4000, 1, 190)]
    assert pipeline.ltv() == {99: (4000, 1, 0)}


def test_the_same_event_twice_in_two_blocks_counts_once(pipeline: Pipeline) -> None:
    seed(pipeline)
    update = sale_event("u", 120, before=sale(10, 1, 500), after=sale(10, 1, 800))

    first = pipeline.send(update)
    second = pipeline.send(update)

    assert first == second == [out(1, 1500, 2, 120)]
    assert pipeline.ltv()[1] == (1500, 2, 0)


def test_the_same_event_twice_in_one_block_counts_once(pipeline: Pipeline) -> None:
    seed(pipeline)
    create = sale_event("c", 110, after=sale(13, 3, 250))

    emitted = pipeline.send(create, create)

    assert emitted == [out(3, 250, 1, 110)]
    assert pipeline.ltv()[3] == (250, 1, 0)


def test_a_replayed_block_changes_nothing(pipeline: Pipeline) -> None:
    seed(pipeline)
    block = [
        sale_event("c", 110, after=sale(13, 3, 250)),
        sale_event("u", 111, before=sale(11, 1, 700), after=sale(11, 3, 700)),
        sale_event("d", 112, before=sale(12, 2, 300)),
    ]
    first = pipeline.send(*block)

    replayed = pipeline.send(*block)

    expected = [out(1, 500, 1, 111), out(2, 0, 0, 112), out(3, 950, 2, 111)]
    assert first == replayed == expected
    assert pipeline.ltv() == {1: (500, 1, 0), 2: (0, 0, 0), 3: (950, 2, 0)}


def test_a_replayed_snapshot_changes_nothing(pipeline: Pipeline) -> None:
    seed(pipeline)
    pipeline.send(sale_event("u", 120, before=sale(10, 1, 500), after=sale(10, 1, 800)))

    seed(pipeline)

    assert pipeline.ltv() == {1: (1500, 2, 0), 2: (300, 1, 0), 3: (0, 0, 0)}


def test_an_older_amount_after_a_newer_one_is_ignored(pipeline: Pipeline) -> None:
    seed(pipeline)
    pipeline.send(sale_event("u", 120, before=sale(10, 1, 600), after=sale(10, 1, 800)))

    emitted = pipeline.send(
        sale_event("u", 115, before=sale(10, 1, 500), after=sale(10, 1, 600))
    )

    assert emitted == [out(1, 1500, 2, 115)]
    assert pipeline.current_sales()[10] == (1, 800)


def test_an_older_owner_after_a_move_is_ignored(pipeline: Pipeline) -> None:
    seed(pipeline)
    pipeline.send(sale_event("u", 130, before=sale(11, 1, 900), after=sale(11, 2, 900)))

    emitted = pipeline.send(
        sale_event("u", 125, before=sale(11, 1, 700), after=sale(11, 1, 900))
    )

    assert emitted == [out(1, 500, 1, 125), out(2, 1200, 2, 125)]
    assert pipeline.ods_ltv() == {1: (500, 1), 2: (1200, 2)}


def test_an_older_create_after_the_delete_is_ignored(pipeline: Pipeline) -> None:
    pipeline.send(sale_event("d", 140, before=sale(60, 5, 300)))

    emitted = pipeline.send(sale_event("c", 90, after=sale(60, 5, 300)))

    assert emitted == [out(5, 0, 0, 90)]
    assert pipeline.ltv() == {5: (0, 0, 0)}


def test_an_older_user_event_after_the_delete_is_ignored(pipeline: Pipeline) -> None:
    seed(pipeline)
    pipeline.send(user_event("d", 150, before=user(3)))

    emitted = pipeline.send(user_event("u", 120, before=user(3), after=user(3, "x@y")))

    assert emitted == [out(3, 0, 0, 120, deleted=1)]


def test_a_gap_in_the_moves_of_a_sale_is_repaired(pipeline: Pipeline) -> None:
    """The move 2 -> 3 arrives before the move 1 -> 2: user 1 still loses the sale."""
    seed(pipeline)

    newest_first = pipeline.send(
        sale_event("u", 140, before=sale(11, 2, 700), after=sale(11, 3, 700))
    )
    late = pipeline.send(
        sale_event("u", 130, before=sale(11, 1, 700), after=sale(11, 2, 700))
    )

    assert newest_first == [
        out(1, 500, 1, 140),
        out(2, 300, 1, 140),
        out(3, 700, 1, 140),
    ]
    assert late == [out(1, 500, 1, 130), out(2, 300, 1, 130), out(3, 700, 1, 130)]
    assert pipeline.current_sales()[11] == (3, 700)


@pytest.mark.parametrize("live_first", [True, False], ids=["live-first", "read-first"])
def test_a_live_change_beats_a_snapshot_read_of_the_same_lsn(
    pipeline: Pipeline, live_first: bool
) -> None:
    snapshot = sale_event("r", 200, after=sale(13, 3, 100))
    live = sale_event("u", 200, before=sale(13, 3, 100), after=sale(13, 3, 900))
    first, second = (live, snapshot) if live_first else (snapshot, live)

    pipeline.send(first)
    pipeline.send(second)

    assert pipeline.ltv()[3] == (900, 1, 0)
    assert pipeline.current_sales()[13] == (3, 900)


def test_a_multi_row_transaction_gives_one_message_per_user(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(
        user_event("c", 300, after=user(4), tx=9),
        sale_event("c", 301, after=sale(20, 4, 1000), tx=9),
        sale_event("c", 302, after=sale(21, 4, 2000), tx=9),
        sale_event("u", 303, before=sale(10, 1, 500), after=sale(10, 1, 550), tx=9),
        sale_event("u", 304, before=sale(12, 2, 300), after=sale(12, 4, 300), tx=9),
    )

    assert emitted == [
        out(1, 1250, 2, 303),
        out(2, 0, 0, 304),
        out(4, 3300, 3, 304),
    ]


def test_several_changes_to_one_sale_in_one_block(pipeline: Pipeline) -> None:
    seed(pipeline)

    emitted = pipeline.send(
        sale_event("c", 300, after=sale(30, 1, 100)),
        sale_event("u", 301, before=sale(30, 1, 100), after=sale(30, 1, 200)),
        sale_event("u", 302, before=sale(30, 1, 200), after=sale(30, 2, 200)),
        sale_event("u", 303, before=sale(30, 2, 200), after=sale(30, 2, 250)),
    )

    assert emitted == [out(1, 1200, 2, 303), out(2, 550, 2, 303)]
    assert pipeline.current_sales()[30] == (2, 250)


def test_a_user_deleted_while_its_sale_changes_gets_one_message(
    pipeline: Pipeline,
) -> None:
    seed(pipeline)

    emitted = pipeline.send(
        sale_event("u", 400, before=sale(12, 2, 300), after=sale(12, 2, 350)),
        user_event("d", 401, before=user(2)),
    )

    assert emitted == [out(2, 350, 1, 401, deleted=1)]


def test_a_large_insert_is_one_block(pipeline: Pipeline) -> None:
    creates = [
        sale_event("c", 1000 + i, after=sale(i, i % 10 + 1, 100)) for i in range(20_000)
    ]

    emitted = pipeline.send(*creates)

    assert sorted(m["user_id"] for m in emitted) == list(range(1, 11))
    assert all(m["ltv"] == 200_000 and m["sale_count"] == 2000 for m in emitted)


def test_an_insert_split_into_blocks_is_repaired_by_the_next_change(
    pipeline: Pipeline,
) -> None:
    """Documented limit: a split insert may leave LTVs short until a next touch."""
    creates = [
        sale_event("c", 1000 + i, after=sale(i, i % 10 + 1, 100)) for i in range(2000)
    ]
    split = (
        "SETTINGS max_insert_block_size = 100, min_insert_block_size_rows = 100, "
        "min_insert_block_size_bytes = 1"
    )

    emitted_split = pipeline.send(*creates, settings=split)
    pipeline.send(
        *(
            sale_event(
                "u", 5000 + u, before=sale(u, u + 1, 100), after=sale(u, u + 1, 150)
            )
            for u in range(10)
        )
    )

    assert len(emitted_split) > 10  # more than one block per user: it was split
    assert pipeline.ltv() == {u: (20_050, 200, 0) for u in range(1, 11)}


# Dead letters.


def good_sale_event() -> Message:
    return sale_event("c", 500, after=sale(70, 8, 123))


def bad(raw: Any, topic: str = SALES) -> Message:
    return message(topic, raw if isinstance(raw, str) else json.dumps(raw), offset=41)


def env(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(envelope("c", 600, None, sale(71, 8, 5)))
    for path, value in changes.items():
        target = document
        *parents, last = path.split("__")
        for key in parents:
            target = target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return document


NOT_INT = "is missing or not an integer"
USER_9 = user(9)

DEAD_LETTER_CASES = [
    ("not-json", bad("this is not JSON"), "not valid JSON"),
    ("empty", bad(""), "not valid JSON"),
    ("truncated", bad('{"op": "c", "after": {"id": 1'), "not valid JSON"),
    ("array", bad([1, 2]), "not a JSON object"),
    ("unknown-topic", bad(env(), topic="other"), "unknown topic other"),
    ("no-op", bad(env(op=...)), "op is missing or not a string"),
    ("op-number", bad(env(op=5)), "op is missing or not a string"),
    ("unknown-op", bad(env(op="x")), "unknown op x"),
    ("truncate-op", bad(env(op="t")), "unknown op t"),
    ("no-source", bad(env(source=...)), f"source.lsn {NOT_INT}"),
    ("lsn-string", bad(env(source__lsn="600")), f"source.lsn {NOT_INT}"),
    ("lsn-negative", bad(env(source__lsn=-1)), "source.lsn is negative"),
    ("no-ts", bad(env(source__ts_ms=...)), f"source.ts_ms {NOT_INT}"),
    ("after-null", bad(env(after=None)), "after is missing or not an object"),
    ("delete-no-before", bad(env(op="d", after=None)), "before is missing or not"),
    ("no-id", bad(env(after__id=...)), f"after.id {NOT_INT}"),
    ("id-float", bad(env(after__id=1.5)), f"after.id {NOT_INT}"),
    ("user-id-null", bad(env(after__user_id=None)), f"after.user_id {NOT_INT}"),
    ("amount-string", bad(env(after__amount="12")), f"after.amount {NOT_INT}"),
    ("amount-too-big", bad(env(after__amount=2**63)), f"after.amount {NOT_INT}"),
    ("branch-string", bad(env(after__branch="3")), "after.branch is not an integer"),
    ("branch-range", bad(env(after__branch=2**40)), "after.branch is out of the INT"),
    ("created-string", bad(env(after__created_at="2024")), "after.created_at is not"),
    ("created-range", bad(env(after__created_at=10**18)), "after.created_at is out"),
    (
        "before-user-string",
        bad(env(op="u", before=sale(71, 8, 5) | {"user_id": "8"})),
        "before.user_id is not an integer",
    ),
    (
        "email-number",
        bad(env(after=USER_9 | {"email": 5}), topic=USERS),
        "a name or the email is not a string",
    ),
    (
        "birthday-string",
        bad(env(after=USER_9 | {"birthday": "x"}), topic=USERS),
        "after.birthday is not an integer",
    ),
    (
        "birthday-range",
        bad(env(after=USER_9 | {"birthday": 10**9}), topic=USERS),
        "after.birthday is out of range",
    ),
]


@pytest.mark.parametrize(
    ("bad_message", "reason"),
    [pytest.param(m, r, id=i) for i, m, r in DEAD_LETTER_CASES],
)
def test_a_malformed_message_is_a_dead_letter_and_the_block_goes_on(
    pipeline: Pipeline, bad_message: Message, reason: str
) -> None:
    emitted = pipeline.send(bad_message, good_sale_event())

    letters = pipeline.dead_letters()
    assert len(letters) == 1
    assert letters[0]["raw"] == bad_message["raw"]
    assert letters[0]["topic"] == bad_message["topic"]
    assert letters[0]["offset"] == 41
    assert reason in letters[0]["error"]
    assert emitted == [out(8, 123, 1, 500)]


def test_later_good_events_apply_after_a_dead_letter(pipeline: Pipeline) -> None:
    seed(pipeline)
    pipeline.send(bad("garbage"))

    emitted = pipeline.send(
        sale_event("u", 120, before=sale(10, 1, 500), after=sale(10, 1, 800))
    )

    assert emitted == [out(1, 1500, 2, 120)]
    assert [d["error"] for d in pipeline.dead_letters()] == ["not valid JSON"]


def test_a_consumer_error_from_kafka_is_a_dead_letter(pipeline: Pipeline) -> None:
    broken = message(SALES, "\x00\x01", offset=7, kafka_error="Cannot parse input")

    emitted = pipeline.send(broken, good_sale_event())

    letters = pipeline.dead_letters()
    assert [(d["offset"], d["error"]) for d in letters] == [
        (7, "kafka: Cannot parse input")
    ]
    assert emitted == [out(8, 123, 1, 500)]


def test_a_null_middle_name_and_missing_optional_fields_are_fine(
    pipeline: Pipeline,
) -> None:
    bare_user = {"id": 9, "email": None}
    bare_sale = {"id": 72, "user_id": 9, "amount": 40}

    emitted = pipeline.send(
        user_event("c", 700, after=bare_user), sale_event("c", 701, after=bare_sale)
    )

    assert emitted == [out(9, 40, 1, 701)]
    assert pipeline.dead_letters() == []


# A random history with redeliveries and reordering, checked against a model.


@dataclass
class Source:
    """A tiny model of the source tables that writes Debezium events."""

    rng: random.Random
    lsn: int = 1000
    users: dict[int, Row] = field(default_factory=dict)
    sales: dict[int, Row] = field(default_factory=dict)
    events: list[Message] = field(default_factory=list)
    seen_users: set[int] = field(default_factory=set)
    next_sale: int = 1

    def snapshot(self, users: int, sales: int) -> None:
        """Rows that exist before the connector starts: reads sharing one lsn."""
        for uid in range(1, users + 1):
            self.users[uid] = user(uid)
            self.seen_users.add(uid)
            self.events.append(user_event("r", self.lsn, after=self.users[uid]))
        for _ in range(sales):
            row = self._new_sale()
            self.events.append(sale_event("r", self.lsn, after=row))

    def step(self) -> None:
        self.lsn += 1
        roll = self.rng.random()
        live = sorted(self.sales)
        if roll < 0.35 or not live:
            self.events.append(sale_event("c", self.lsn, after=self._new_sale()))
        elif roll < 0.55:
            self._update_sale(self.rng.choice(live), move=False)
        elif roll < 0.7:
            self._update_sale(self.rng.choice(live), move=True)
        elif roll < 0.85:
            before = self.sales.pop(self.rng.choice(live))
            self.events.append(sale_event("d", self.lsn, before=before))
        elif roll < 0.93 and self.users:
            uid = self.rng.choice(sorted(self.users))
            self.events.append(user_event("d", self.lsn, before=self.users.pop(uid)))
        else:
            self._upsert_user(self.rng.randint(1, 12))

    def _new_sale(self) -> Row:
        row = sale(
            self.next_sale, self.rng.randint(1, 12), self.rng.randint(999, 99_900)
        )
        self.next_sale += 1
        self.sales[row["id"]] = row
        return row

    def _update_sale(self, sale_id: int, move: bool) -> None:
        before = self.sales[sale_id]
        after = dict(before)
        if move:
            after["user_id"] = self.rng.randint(1, 12)
        else:
            after["amount"] = self.rng.randint(999, 99_900)
        self.sales[sale_id] = after
        self.events.append(sale_event("u", self.lsn, before=before, after=after))

    def _upsert_user(self, uid: int) -> None:
        before = self.users.get(uid)
        self.users[uid] = user(uid, f"new{self.lsn}@example.com")
        self.seen_users.add(uid)
        op = "c" if before is None else "u"
        self.events.append(
            user_event(op, self.lsn, before=before, after=self.users[uid])
        )

    def expected(self, user_ids: set[int]) -> dict[int, tuple[int, int, int]]:
        """user_id -> (ltv, sale_count, user_deleted) of the final source state."""
        totals = {u: [0, 0] for u in user_ids}
        for row in self.sales.values():
            totals[row["user_id"]][0] += row["amount"]
            totals[row["user_id"]][1] += 1
        deleted = self.seen_users - set(self.users)
        return {u: (t[0], t[1], int(u in deleted)) for u, t in totals.items()}


def deliveries(events: list[Message], rng: random.Random) -> list[list[Message]]:
    """At-least-once delivery: blocks of random size, replays, local reordering."""
    stream = list(events)
    for _ in range(len(events) // 5):
        start = rng.randrange(len(stream))
        stream[start:start] = stream[start : start + rng.randint(1, 6)]
    for i in range(len(stream) - 1):
        if rng.random() < 0.2:
            stream[i], stream[i + 1] = stream[i + 1], stream[i]
    blocks, i = [], 0
    while i < len(stream):
        size = rng.randint(1, 25)
        blocks.append(stream[i : i + size])
        i += size
    return blocks


def touched_users(events: list[Message]) -> set[int]:
    found = set()
    for e in events:
        doc = json.loads(e["raw"])
        for row in (doc["before"], doc["after"]):
            if row is not None:
                found.add(row["user_id"] if e["topic"] == SALES else row["id"])
    return found


def test_a_random_history_with_redeliveries_ends_exact(pipeline: Pipeline) -> None:
    rng = random.Random(20_251_203)
    source = Source(rng)
    source.snapshot(users=8, sales=40)
    for _ in range(300):
        source.step()

    for block in deliveries(source.events, rng):
        pipeline.send(*block)

    users = touched_users(source.events)
    expected = source.expected(users)
    assert pipeline.ltv() == expected
    assert pipeline.ods_ltv() == {u: (v[0], v[1]) for u, v in expected.items() if v[1]}
    last = {
        m["user_id"]: (m["ltv"], m["sale_count"], m["user_deleted"])
        for m in pipeline.emitted
    }
    assert last == expected


# The DDL itself.


def test_applying_twice_keeps_the_data(pipeline: Pipeline, session: Session) -> None:
    seed(pipeline)

    count = apply_pipeline(ChdbCommander(session), PipelineParams(), use_kafka=False)

    assert count > 20
    assert pipeline.ltv() == {1: (1200, 2, 0), 2: (300, 1, 0), 3: (0, 0, 0)}


def test_the_kafka_variant_is_accepted_by_chdb(session: Session) -> None:
    """Creates the Kafka tables against a closed local port: DDL check, no traffic."""
    session.query("DROP DATABASE IF EXISTS revetl")
    params = PipelineParams(
        kafka_brokers="127.0.0.1:1", consumer_group="revetl-ddl-check"
    )
    try:
        apply_pipeline(ChdbCommander(session), params, use_kafka=True)
        engines = {
            r["name"]: r["engine"]
            for r in Pipeline(session).rows(
                "SELECT name, engine FROM system.tables WHERE database = 'revetl'"
            )
        }
    finally:
        session.query("DROP DATABASE IF EXISTS revetl")

    assert engines["cdc_kafka"] == "Kafka"
    assert engines["ltv_relay_sink"] == "URL"
    assert "ltv_kafka_sink" not in engines
    assert engines["cdc_kafka_mv"] == "MaterializedView"
    assert "ltv_changes_out" not in engines
