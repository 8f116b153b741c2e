"""Helpers for end-to-end tests: source changes in, ranks in the product DB out."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from confluent_kafka import Consumer, Producer

from batch_ltv.reconcile import Report
from batch_ltv.reconcile_io import reconcile
from services.stack import Stack
from stream_app.ranks import default_rules

T = TypeVar("T")
WAIT_S = 90.0
_ids = itertools.count(random.randrange(10**9, 2 * 10**9, 10**5))


def next_id() -> int:
    """A user or sale id no other test run uses."""
    return next(_ids)


def wait_for(read: Callable[[], T], expected: T, timeout_s: float = WAIT_S) -> T:
    """Poll until read() returns expected; return the last value either way."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


class Pipeline:
    """The live pipeline as a test sees it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.source = psycopg.connect(stack.source_pg.dsn(), autocommit=True)
        self.target = psycopg.connect(stack.target_pg.dsn(), autocommit=True)

    def close(self) -> None:
        self.source.close()
        self.target.close()

    def add_user(self, user_id: int | None = None) -> int:
        user_id = user_id or next_id()
        self.source.execute(
            "INSERT INTO public.users (id, first_name, last_name, email) "
            "VALUES (%s, 'Test', 'User', %s)",
            (user_id, f"u{user_id}@example.test"),
        )
        return user_id

    def add_sale(self, user_id: int, amount: int, sale_id: int | None = None) -> int:
        sale_id = sale_id or next_id()
        self.source.execute(
            "INSERT INTO public.sales (id, user_id, branch, amount) "
            "VALUES (%s, %s, 1, %s)",
            (sale_id, user_id, amount),
        )
        return sale_id

    def rank(self, user_id: int) -> tuple[int, str, int] | None:
        row = self.target.execute(
            "SELECT ltv, user_class, discount_pct FROM public.user_ltv_history "
            "WHERE user_id = %s",
            (user_id,),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]))

    def wait_rank(self, user_id: int, ltv: int) -> tuple[int, str, int] | None:
        cls, discount = default_rules().class_for(ltv)
        return wait_for(lambda: self.rank(user_id), (ltv, cls, discount))

    def history(self, user_id: int) -> list[tuple[Any, ...]]:
        rows = self.target.execute(
            "SELECT old_class, new_class, ltv FROM public.rank_changes "
            "WHERE user_id = %s ORDER BY id",
            (user_id,),
        ).fetchall()
        return [tuple(r) for r in rows]

    def clickhouse_ltv(self, user_id: int) -> int | None:
        with self.stack.clickhouse.client() as client:
            rows = client.query(
                "SELECT ltv FROM revetl.user_ltv FINAL WHERE user_id = %(u)s",
                parameters={"u": user_id},
            ).result_rows
        return int(rows[0][0]) if rows else None

    def reconcile(self) -> Report:
        return reconcile(self.stack, default_rules(), WAIT_S, lambda lag, r: None)

    def events(
        self, topic: str, match: Callable[[dict[str, Any]], bool]
    ) -> list[bytes]:
        """Raw values of the messages on a topic that match, oldest first."""
        consumer = Consumer({
            "bootstrap.servers": self.stack.kafka.bootstrap,
            "group.id": f"it-read-{next_id()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })  # fmt: skip
        consumer.subscribe([topic])
        found: list[bytes] = []
        idle_since = time.monotonic()
        try:
            while time.monotonic() - idle_since < 5.0:
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                idle_since = time.monotonic()
                value = msg.value()
                if value and _matches(value, match):
                    found.append(value)
        finally:
            consumer.close()
        return found

    def produce(self, topic: str, value: bytes) -> None:
        producer = Producer({"bootstrap.servers": self.stack.kafka.bootstrap})
        producer.produce(topic, value)
        assert producer.flush(30) == 0


def _matches(value: bytes, match: Callable[[dict[str, Any]], bool]) -> bool:
    try:
        event = json.loads(value)
    except ValueError:
        return False
    return isinstance(event, dict) and match(event)
