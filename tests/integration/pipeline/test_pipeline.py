"""End to end: a change committed in the source reaches the product DB's ranks.

Each test changes the real source tables, waits for the product DB, and ends
with `reconcile` agreeing across source, ClickHouse and the product DB.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline_support import Pipeline, next_id, wait_for

from connectors import debezium

USERS_TOPIC = "oltp.public.users"
SALES_TOPIC = "oltp.public.sales"


def assert_reconciled(pipeline: Pipeline) -> None:
    report = pipeline.reconcile()
    assert report.agrees, (report.summary(), report.differences[:5])


def test_a_sale_insert_ranks_the_user(pipeline: Pipeline) -> None:
    user = pipeline.add_user()
    pipeline.add_sale(user, 1_200_000)

    assert pipeline.wait_rank(user, 1_200_000) == (1_200_000, "B", 5)
    # One rank change, or two when the user's own insert was processed first.
    assert pipeline.history(user) in (
        [(None, "B", 1_200_000)],
        [(None, "A", 0), ("A", "B", 1_200_000)],
    )
    assert_reconciled(pipeline)


def test_an_amount_update_changes_the_ltv(pipeline: Pipeline) -> None:
    user = pipeline.add_user()
    sale = pipeline.add_sale(user, 2_000_000)
    pipeline.wait_rank(user, 2_000_000)

    pipeline.source.execute(
        "UPDATE public.sales SET amount = %s WHERE id = %s", (6_000_000, sale)
    )

    assert pipeline.wait_rank(user, 6_000_000) == (6_000_000, "C", 10)
    assert_reconciled(pipeline)


def test_a_sale_moved_to_another_user_moves_its_amount(pipeline: Pipeline) -> None:
    alice, bob = pipeline.add_user(), pipeline.add_user()
    sale = pipeline.add_sale(alice, 5_500_000)
    pipeline.add_sale(bob, 100)
    pipeline.wait_rank(alice, 5_500_000)

    pipeline.source.execute(
        "UPDATE public.sales SET user_id = %s WHERE id = %s", (bob, sale)
    )

    assert pipeline.wait_rank(alice, 0) == (0, "A", 0)
    assert pipeline.wait_rank(bob, 5_500_100) == (5_500_100, "C", 10)
    assert_reconciled(pipeline)


def test_a_deleted_sale_no_longer_counts(pipeline: Pipeline) -> None:
    user = pipeline.add_user()
    keep = pipeline.add_sale(user, 1_000_000)
    drop = pipeline.add_sale(user, 500_000)
    pipeline.wait_rank(user, 1_500_000)

    pipeline.source.execute("DELETE FROM public.sales WHERE id = %s", (drop,))

    assert pipeline.wait_rank(user, 1_000_000) == (1_000_000, "B", 5)
    assert keep
    assert_reconciled(pipeline)


def test_a_deleted_user_leaves_the_product_db(pipeline: Pipeline) -> None:
    user = pipeline.add_user()
    pipeline.add_sale(user, 16_000_000)
    pipeline.wait_rank(user, 16_000_000)

    with pipeline.source.transaction():
        pipeline.source.execute("DELETE FROM public.sales WHERE user_id = %s", (user,))
        pipeline.source.execute("DELETE FROM public.users WHERE id = %s", (user,))

    assert wait_for(lambda: pipeline.rank(user), None) is None
    assert pipeline.history(user)[-1][1] is None
    assert_reconciled(pipeline)


def test_a_duplicate_event_does_not_count_twice(pipeline: Pipeline) -> None:
    user = pipeline.add_user()
    sale = pipeline.add_sale(user, 3_000_000)
    pipeline.wait_rank(user, 3_000_000)
    events = pipeline.events(SALES_TOPIC, lambda e: _after_id(e) == sale)
    assert len(events) == 1

    pipeline.produce(SALES_TOPIC, events[0])
    pipeline.add_sale(user, 1)  # a later change proves the duplicate was consumed

    assert pipeline.wait_rank(user, 3_000_001) == (3_000_001, "B", 5)
    assert pipeline.clickhouse_ltv(user) == 3_000_001
    assert_reconciled(pipeline)


def test_an_older_version_after_a_newer_one_is_ignored(pipeline: Pipeline) -> None:
    user = pipeline.add_user()
    sale = pipeline.add_sale(user, 1_000_000)
    pipeline.wait_rank(user, 1_000_000)
    pipeline.source.execute(
        "UPDATE public.sales SET amount = %s WHERE id = %s", (40_000_000, sale)
    )
    pipeline.wait_rank(user, 40_000_000)
    old = pipeline.events(
        SALES_TOPIC, lambda e: _after_id(e) == sale and e.get("op") == "c"
    )

    pipeline.produce(SALES_TOPIC, old[0])
    pipeline.add_sale(user, 1)

    assert pipeline.wait_rank(user, 40_000_001) == (40_000_001, "F", 20)
    assert_reconciled(pipeline)


def test_a_multi_row_transaction_lands_whole(pipeline: Pipeline) -> None:
    users = [next_id() for _ in range(3)]
    with pipeline.source.transaction():
        for user in users:
            pipeline.add_user(user)
            for _ in range(4):
                pipeline.add_sale(user, 2_500_000)

    for user in users:
        assert pipeline.wait_rank(user, 10_000_000) == (10_000_000, "C", 10)
    assert_reconciled(pipeline)


def test_a_malformed_message_is_dead_lettered_and_the_flow_goes_on(
    pipeline: Pipeline,
) -> None:
    marker = f"not json {next_id()}"
    for topic in (USERS_TOPIC, SALES_TOPIC):
        pipeline.produce(topic, f"{marker} {topic}".encode())
    user = pipeline.add_user()
    pipeline.add_sale(user, 20_000_000)

    assert pipeline.wait_rank(user, 20_000_000) == (20_000_000, "E", 15)
    letters = wait_for(lambda: _dead_letters(pipeline, marker), 2)
    assert letters == 2
    assert_reconciled(pipeline)


def test_crossing_class_boundaries_up_and_down_is_recorded(
    pipeline: Pipeline,
) -> None:
    user = pipeline.add_user()
    big = pipeline.add_sale(user, 61_000_000)
    pipeline.wait_rank(user, 61_000_000)
    pipeline.add_sale(user, 30_000_000)
    pipeline.wait_rank(user, 91_000_000)

    pipeline.source.execute("DELETE FROM public.sales WHERE id = %s", (big,))

    assert pipeline.wait_rank(user, 30_000_000) == (30_000_000, "F", 20)
    classes = [(old, new) for old, new, _ in pipeline.history(user)]
    assert classes[-2:] == [("S", "SS"), ("SS", "F")]
    assert ("A", "S") in classes or (None, "S") in classes
    assert_reconciled(pipeline)


def _after_id(event: dict[str, Any]) -> int | None:
    after = event.get("after")
    return int(after["id"]) if isinstance(after, dict) and "id" in after else None


def _dead_letters(pipeline: Pipeline, marker: str) -> int:
    with pipeline.stack.clickhouse.client() as client:
        rows = client.query(
            "SELECT count() FROM revetl.dead_letters WHERE position(raw, %(m)s) > 0",
            parameters={"m": marker},
        ).result_rows
    return int(rows[0][0])


def test_dead_letter_rows_carry_the_reason(pipeline: Pipeline) -> None:
    marker = json.dumps({"op": "c", "after": {"id": next_id()}, "source": {}})
    pipeline.produce(SALES_TOPIC, marker.encode())

    assert wait_for(lambda: _dead_letters(pipeline, marker), 1) == 1
    with pipeline.stack.clickhouse.client() as client:
        rows = client.query(
            "SELECT topic, error FROM revetl.dead_letters WHERE raw = %(m)s",
            parameters={"m": marker},
        ).result_rows
    assert rows[0][0] == SALES_TOPIC
    assert rows[0][1] != ""


def test_rows_from_before_the_connector_are_snapshotted_then_streamed(
    pipeline: Pipeline,
) -> None:
    stack = pipeline.stack
    debezium.reset_capture(stack.connect, stack.source_pg)
    user = pipeline.add_user()
    pipeline.add_sale(user, 7_000_000)
    pipeline.add_sale(user, 9_000_000)

    debezium.register(stack.settings, stack.connect, stack.source_pg)

    assert pipeline.wait_rank(user, 16_000_000) == (16_000_000, "E", 15)
    snapshot = pipeline.events(
        SALES_TOPIC, lambda e: e.get("op") == "r" and _after_user(e) == user
    )
    assert len(snapshot) == 2
    pipeline.add_sale(user, 15_000_000)
    assert pipeline.wait_rank(user, 31_000_000) == (31_000_000, "F", 20)
    assert_reconciled(pipeline)


def _after_user(event: dict[str, Any]) -> int | None:
    after = event.get("after")
    return int(after["user_id"]) if isinstance(after, dict) else None
