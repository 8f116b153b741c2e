"""Backoff between target write attempts: doubling from the first wait, capped."""

from __future__ import annotations

import pytest

from stream_app.retry import Backoff


def test_waits_double_until_the_cap() -> None:
    backoff = Backoff(initial_s=0.2, max_s=10.0)

    waits = [backoff.delay_s(n) for n in range(1, 10)]

    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])


def test_a_long_outage_stays_at_the_cap() -> None:
    assert Backoff(initial_s=0.5, max_s=30.0).delay_s(1_000_000) == 30.0


def test_factor_one_waits_the_same_every_time() -> None:
    backoff = Backoff(initial_s=1.5, max_s=60.0, factor=1.0)

    assert {backoff.delay_s(n) for n in (1, 2, 50, 10**9)} == {1.5}


@pytest.mark.parametrize(
    ("initial_s", "max_s", "factor"),
    [(0.0, 1.0, 2.0), (-1.0, 1.0, 2.0), (2.0, 1.0, 2.0), (0.1, 1.0, 0.5)],
)
def test_impossible_policies_are_refused(
    initial_s: float, max_s: float, factor: float
) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial_s, max_s, factor)


def test_failures_count_from_one() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        Backoff(0.1, 1.0).delay_s(0)
