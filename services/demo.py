"""The demo: a few shoppers buy in a burst while their rank changes stream back."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg

from batch_ltv.seed import name_pool
from services.stack import Stack

DEMO_USER_BASE = 8_000_000_000
"""Demo users and their sales get ids from here up, so they never collide with
seeded rows (`revetl seed` numbers its users and sales from 1)."""


@dataclass(frozen=True)
class RankChange:
    user_id: int
    name: str
    old_class: str | None
    new_class: str | None
    ltv: int
    lag_s: float


def ensure_users(stack: Stack, count: int, seed: int) -> dict[int, str]:
    """Create the demo shoppers if they are missing; returns id -> name.

    Names come from the seeding's pool, so a first name and a surname agree in
    gender as they do in the seeded shop.
    """
    names = name_pool(seed, size=count)
    users = {}
    rows = []
    for i in range(count):
        first, last = names.first[i], names.last[i]
        user_id = DEMO_USER_BASE + i
        users[user_id] = f"{first} {last}"
        email = f"{names.login[i]}.{user_id}@{names.domain[i]}"
        rows.append((user_id, first, last, email))
    with psycopg.connect(stack.source_pg.dsn()) as conn:
        conn.cursor().executemany(
            "INSERT INTO public.users (id, first_name, last_name, email) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            rows,
        )
    return users


def _next_demo_sale_id(stack: Stack) -> int:
    with psycopg.connect(stack.source_pg.dsn()) as conn:
        row = conn.execute(
            "SELECT coalesce(max(id), %s) + 1 FROM public.sales WHERE id > %s",
            (DEMO_USER_BASE, DEMO_USER_BASE),
        ).fetchone()
    return int(row[0]) if row else DEMO_USER_BASE + 1


def last_change_id(stack: Stack) -> int:
    with psycopg.connect(stack.target_pg.dsn()) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM public.rank_changes")
        value = row.fetchone()
    return int(value[0]) if value else 0


def shop(
    stack: Stack,
    users: dict[int, str],
    rate: int,
    seconds: float,
    seed: int,
    after_id: int,
    drained: Callable[[], bool],
) -> Iterator[RankChange | int]:
    """Insert sales at `rate` per second; yield rank changes as they land and,
    every tick, the number of sales sent so far. After the shopping it keeps
    reading changes until `drained()` says the pipeline has caught up (60 s at
    most)."""
    rng = random.Random(seed)
    ids = list(users)
    sent = 0
    next_sale = _next_demo_sale_id(stack)
    began = time.monotonic()
    with (
        psycopg.connect(stack.source_pg.dsn(), autocommit=True) as source,
        psycopg.connect(stack.target_pg.dsn(), autocommit=True) as target,
    ):
        while True:
            elapsed = time.monotonic() - began
            if elapsed >= seconds + 60 or (elapsed >= seconds + 1 and drained()):
                break
            if elapsed < seconds:
                due = int((time.monotonic() - began) * rate) - sent
                if due > 0:
                    batch = [
                        (next_sale + k, rng.choice(ids), rng.randint(1, 150),
                         rng.randint(999, 99_900))
                        for k in range(due)
                    ]  # fmt: skip
                    with source.transaction():
                        source.cursor().executemany(
                            "INSERT INTO public.sales (id, user_id, branch, amount) "
                            "VALUES (%s, %s, %s, %s)",
                            batch,
                        )
                    sent += due
                    next_sale += due
            for change in _changes_since(target, after_id, users):
                after_id = max(after_id, change[0])
                yield change[1]
            yield sent
            time.sleep(0.1)


def _changes_since(
    target: psycopg.Connection[tuple[object, ...]], after_id: int, users: dict[int, str]
) -> list[tuple[int, RankChange]]:
    rows = target.execute(
        "SELECT id, user_id, old_class, new_class, ltv, source_committed_at, "
        "applied_at FROM public.rank_changes WHERE id > %s AND user_id >= %s "
        "ORDER BY id",
        (after_id, DEMO_USER_BASE),
    ).fetchall()
    changes = []
    for change_id, user_id, old, new, ltv, committed, applied in rows:
        assert isinstance(committed, datetime) and isinstance(applied, datetime)
        user = int(str(user_id))
        change = RankChange(
            user_id=user,
            name=users.get(user, str(user)),
            old_class=None if old is None else str(old),
            new_class=None if new is None else str(new),
            ltv=int(str(ltv)),
            lag_s=(applied - committed).total_seconds(),
        )
        changes.append((int(str(change_id)), change))
    return changes
