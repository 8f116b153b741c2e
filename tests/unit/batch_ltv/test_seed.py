"""Seeding generation: determinism, shapes and bounds of the generated rows."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime

import pytest

from batch_ltv.seed import (
    BLOCK_USERS,
    SeedPlan,
    generate,
    sale_rows,
    user_columns,
    user_rows,
)
from services.errors import ConfigurationError

UNTIL = date(2025, 10, 13)


def plan(users: int = 250, max_sales: int = 40, seed: int = 42) -> SeedPlan:
    return SeedPlan.checked(users, max_sales, seed, UNTIL)


def test_same_seed_gives_the_same_rows() -> None:
    assert list(user_rows(plan())) == list(user_rows(plan()))
    assert list(sale_rows(plan())) == list(sale_rows(plan()))


def test_another_seed_gives_other_rows() -> None:
    assert list(user_rows(plan(seed=1))) != list(user_rows(plan(seed=2)))
    assert list(sale_rows(plan(seed=1))) != list(sale_rows(plan(seed=2)))


def test_ids_are_sequential_from_one() -> None:
    users = list(user_rows(plan()))
    sales = list(sale_rows(plan()))
    assert [u.id for u in users] == list(range(1, 251))
    assert [s.id for s in sales] == list(range(1, len(sales) + 1))


def test_resuming_at_a_block_gives_the_rest_of_the_full_run() -> None:
    full = list(generate(plan()))
    resumed = list(generate(plan(), start_user=2 * BLOCK_USERS))
    assert [b.index for b in resumed] == [2]
    assert resumed[0].users == full[2].users
    assert resumed[0].sale_ids.tolist() == full[2].sale_ids.tolist()
    assert resumed[0].amounts.tolist() == full[2].amounts.tolist()


@pytest.mark.parametrize("users", [250, 200, 20])
def test_resuming_a_finished_plan_gives_nothing(users: int) -> None:
    assert list(generate(plan(users=users), start_user=users)) == []


def test_users_are_in_their_ranges_with_names_and_unique_emails() -> None:
    users = list(user_rows(plan(users=2000, max_sales=0)))
    assert all(
        datetime(2024, 1, 1) <= u.created_at < datetime(2025, 1, 1) for u in users
    )
    assert all(date(1980, 1, 1) <= u.birthday <= date(2005, 12, 31) for u in users)
    assert all(u.first_name and u.last_name and u.middle_name for u in users)
    assert len({u.email for u in users}) == len(users)
    assert all("@" in u.email for u in users)
    months = Counter(u.created_at.month for u in users)
    assert len(months) == 12


def test_sales_per_user_are_within_bounds_with_a_uniform_mean() -> None:
    columns = user_columns(plan(users=10_000, max_sales=1000))
    counts = columns.sale_counts
    assert counts.min() >= 0
    assert counts.max() <= 1000
    assert 490 < counts.mean() < 510
    assert counts.min() < 20 and counts.max() > 980


def test_sales_are_after_their_user_and_before_until_within_bounds() -> None:
    p = plan(users=300, max_sales=100)
    created = {u.id: u.created_at for u in user_rows(p)}
    sales = list(sale_rows(p))
    assert len(sales) == int(user_columns(p).sale_counts.sum())
    assert all(
        created[s.user_id] < s.created_at < datetime(2025, 10, 13) for s in sales
    )
    assert {s.branch for s in sales} <= set(range(1, 151))
    assert min(s.branch for s in sales) == 1 and max(s.branch for s in sales) == 150
    assert all(999 <= s.amount <= 99_900 for s in sales)
    assert (
        min(s.amount for s in sales) < 2_000 and max(s.amount for s in sales) > 98_000
    )


def test_a_user_without_room_still_gets_only_valid_sales() -> None:
    # The earliest possible until leaves a day or less for the last users' sales.
    p = SeedPlan.checked(300, 50, 7, date(2025, 1, 2))
    created = {u.id: u.created_at for u in user_rows(p)}
    assert all(
        created[s.user_id] < s.created_at < datetime(2025, 1, 2) for s in sale_rows(p)
    )


def test_zero_sales_per_user_gives_no_sales() -> None:
    assert list(sale_rows(plan(max_sales=0))) == []


@pytest.mark.parametrize(
    "until", [date(2025, 1, 1), date(2024, 6, 1), date(2020, 1, 1)]
)
def test_until_not_after_the_users_creation_is_refused(until: date) -> None:
    with pytest.raises(ConfigurationError, match=f"until={until} must be after"):
        SeedPlan.checked(10, 10, 42, until)


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as info:
        SeedPlan.checked(0, -1, -5, UNTIL)
    message = str(info.value)
    assert "users=0" in message
    assert "max_sales_per_user=-1" in message
    assert "seed=-5" in message


def test_resuming_inside_a_block_is_refused() -> None:
    with pytest.raises(ValueError, match="start_user=5"):
        next(generate(plan(), start_user=5))
