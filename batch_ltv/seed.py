"""Deterministic generation of the shop's users and sales for seeding; no I/O.

The rows are shaped like the original generator's: users created uniformly in
2024, birthdays 1980..2005, Russian names from Faker `ru_RU`; per user a uniform
0..M sales, each strictly after the user's created_at and before `until`, branch
1..150, amount 999..99,900 roubles.

Ids are part of the output: users get 1..N, sales get 1..S in generation order
(user by user, each user's sales by time). The same plan gives the same rows
with the same Faker and numpy versions. Faker is slow, so it only fills a small
pool of names once; everything per row is drawn with numpy, a block of
`BLOCK_USERS` users at a time, each block from its own random stream, so a run
can resume at any block without drawing the blocks before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from faker import Faker

from services.errors import ConfigurationError

GENERATOR_VERSION = 1
"""Bump when a change to this module changes the rows a plan gives."""

USERS_FROM = datetime(2024, 1, 1)
USERS_TO = datetime(2025, 1, 1)
BIRTHDAYS_FROM = date(1980, 1, 1)
BIRTHDAYS_TO = date(2005, 12, 31)
BRANCHES = (1, 150)
AMOUNTS = (999, 99_900)

BLOCK_USERS = 100
"""Users per random stream; part of the determinism contract, so never change it
without bumping GENERATOR_VERSION."""
NAME_POOL_SIZE = 2_000
MAX_USERS = 10_000_000
MAX_SALES_PER_USER = 1_000_000

_USER_SECONDS = int((USERS_TO - USERS_FROM).total_seconds())
_BIRTHDAY_DAYS = (BIRTHDAYS_TO - BIRTHDAYS_FROM).days + 1

I64 = npt.NDArray[np.int64]


class UserRow(NamedTuple):
    id: int
    created_at: datetime
    first_name: str
    last_name: str
    middle_name: str
    birthday: date
    email: str


class SaleRow(NamedTuple):
    id: int
    user_id: int
    created_at: datetime
    branch: int
    amount: int


@dataclass(frozen=True)
class SeedPlan:
    """What to generate. Build it with `SeedPlan.checked` to validate it."""

    users: int = 10_000
    max_sales_per_user: int = 1_000
    seed: int = 42
    until: date = date(2025, 10, 13)

    @classmethod
    def checked(
        cls, users: int, max_sales_per_user: int, seed: int, until: date
    ) -> SeedPlan:
        """The plan, or one ConfigurationError listing every bad value."""
        problems = []
        if not 1 <= users <= MAX_USERS:
            problems.append(f"users={users} must be between 1 and {MAX_USERS:,}")
        if not 0 <= max_sales_per_user <= MAX_SALES_PER_USER:
            problems.append(
                f"max_sales_per_user={max_sales_per_user} must be between 0 and "
                f"{MAX_SALES_PER_USER:,}"
            )
        if seed < 0:
            problems.append(f"seed={seed} must be 0 or more")
        if _as_date(until) <= USERS_TO.date():
            problems.append(
                f"until={until} must be after {USERS_TO.date()}: users are created "
                f"from {USERS_FROM.date()} until {USERS_TO.date()} and every sale "
                "comes after its user; pass a later --until"
            )
        if problems:
            raise ConfigurationError("bad seeding plan: " + "; ".join(problems))
        return cls(users, max_sales_per_user, seed, _as_date(until))

    @property
    def until_seconds(self) -> int:
        """`until` (midnight) in seconds after USERS_FROM."""
        return int((datetime.combine(self.until, time()) - USERS_FROM).total_seconds())

    @property
    def blocks(self) -> int:
        return -(-self.users // BLOCK_USERS)


@dataclass(frozen=True)
class NamePool:
    first: list[str]
    last: list[str]
    middle: list[str]
    login: list[str]
    domain: list[str]


@dataclass(frozen=True)
class UserColumns:
    """Every user's drawn values; small (a few arrays of N)."""

    created_seconds: I64
    birthday_days: I64
    name_index: I64
    sale_counts: I64

    @property
    def sales_total(self) -> int:
        return int(self.sale_counts.sum())


@dataclass(frozen=True)
class Block:
    """The users of one block and all their sales, as columns."""

    index: int
    users: list[UserRow]
    sale_ids: I64
    sale_user_ids: I64
    sale_seconds: I64
    """Seconds after USERS_FROM."""
    branches: I64
    amounts: I64

    @property
    def sale_count(self) -> int:
        return len(self.sale_ids)


def _as_date(value: date) -> date:
    return value.date() if isinstance(value, datetime) else value


def name_pool(seed: int, size: int = NAME_POOL_SIZE) -> NamePool:
    """Half male, half female full names, logins and mail domains from Faker."""
    fake = Faker("ru_RU")
    fake.seed_instance(seed)
    pool = NamePool([], [], [], [], [])
    for i in range(size):
        sex = "male" if i % 2 == 0 else "female"
        pool.first.append(getattr(fake, f"first_name_{sex}")())
        pool.last.append(getattr(fake, f"last_name_{sex}")())
        pool.middle.append(getattr(fake, f"middle_name_{sex}")())
        pool.login.append(fake.user_name())
        pool.domain.append(fake.free_email_domain())
    return pool


def user_columns(plan: SeedPlan) -> UserColumns:
    """Draw every user's creation time, birthday, name and number of sales."""
    rng = np.random.default_rng([plan.seed, 1])
    created = rng.integers(0, _USER_SECONDS, size=plan.users, dtype=np.int64)
    birthdays = rng.integers(0, _BIRTHDAY_DAYS, size=plan.users, dtype=np.int64)
    names = rng.integers(0, NAME_POOL_SIZE, size=plan.users, dtype=np.int64)
    counts_rng = np.random.default_rng([plan.seed, 2])
    counts = counts_rng.integers(
        0, plan.max_sales_per_user + 1, size=plan.users, dtype=np.int64
    )
    return UserColumns(created, birthdays, names, counts)


def _user_rows(columns: UserColumns, pool: NamePool, lo: int, hi: int) -> list[UserRow]:
    rows = []
    for i in range(lo, hi):
        name = int(columns.name_index[i])
        user_id = i + 1
        rows.append(
            UserRow(
                id=user_id,
                created_at=USERS_FROM
                + timedelta(seconds=int(columns.created_seconds[i])),
                first_name=pool.first[name],
                last_name=pool.last[name],
                middle_name=pool.middle[name],
                birthday=BIRTHDAYS_FROM + timedelta(days=int(columns.birthday_days[i])),
                email=f"{pool.login[name]}.{user_id}@{pool.domain[name]}",
            )
        )
    return rows


def _block(
    plan: SeedPlan, columns: UserColumns, pool: NamePool, index: int, first_sale: int
) -> Block:
    lo = index * BLOCK_USERS
    hi = min(lo + BLOCK_USERS, plan.users)
    counts = columns.sale_counts[lo:hi]
    total = int(counts.sum())
    rng = np.random.default_rng([plan.seed, 3, index])

    owners = np.repeat(np.arange(lo, hi, dtype=np.int64), counts)
    earliest = columns.created_seconds[owners] + 1
    seconds = rng.integers(earliest, plan.until_seconds, dtype=np.int64)
    branches = rng.integers(BRANCHES[0], BRANCHES[1] + 1, size=total, dtype=np.int64)
    amounts = rng.integers(AMOUNTS[0], AMOUNTS[1] + 1, size=total, dtype=np.int64)

    order = np.lexsort((seconds, owners))
    return Block(
        index=index,
        users=_user_rows(columns, pool, lo, hi),
        sale_ids=np.arange(first_sale, first_sale + total, dtype=np.int64),
        sale_user_ids=owners[order] + 1,
        sale_seconds=seconds[order],
        branches=branches[order],
        amounts=amounts[order],
    )


def generate(plan: SeedPlan, start_user: int = 0) -> Iterator[Block]:
    """The plan's blocks, from the one holding user id `start_user + 1` on.

    `start_user` must be a multiple of BLOCK_USERS (or the plan's user count).
    """
    if start_user % BLOCK_USERS and start_user != plan.users:
        message = f"start_user={start_user} is not a multiple of {BLOCK_USERS}"
        raise ValueError(message)
    if start_user == plan.users:
        return  # finished; the last block may be partial, so do not start it again
    columns = user_columns(plan)
    pool = name_pool(plan.seed)
    first_sale = int(columns.sale_counts[:start_user].sum()) + 1
    for index in range(start_user // BLOCK_USERS, plan.blocks):
        block = _block(plan, columns, pool, index, first_sale)
        first_sale += block.sale_count
        yield block


def user_rows(plan: SeedPlan) -> Iterator[UserRow]:
    for block in generate(plan):
        yield from block.users


def sale_rows(plan: SeedPlan) -> Iterator[SaleRow]:
    """Every sale as a row; for tests and small plans (it builds Python objects)."""
    for block in generate(plan):
        for sale_id, user_id, secs, branch, amount in zip(
            block.sale_ids.tolist(),
            block.sale_user_ids.tolist(),
            block.sale_seconds.tolist(),
            block.branches.tolist(),
            block.amounts.tolist(),
            strict=True,
        ):
            created_at = USERS_FROM + timedelta(seconds=secs)
            yield SaleRow(sale_id, user_id, created_at, branch, amount)
