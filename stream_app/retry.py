"""The wait between attempts at a failed target write: doubling, capped."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `initial_s`, then times `factor` each attempt, capped.

    No jitter: one worker per partition retries one batch at a time, so there is
    no herd of clients to spread out.
    """

    initial_s: float
    max_s: float
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            message = (
                f"backoff needs 0 < initial_s <= max_s and factor >= 1, got "
                f"initial_s={self.initial_s} max_s={self.max_s} factor={self.factor}"
            )
            raise ValueError(message)

    def delay_s(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1-based)."""
        if failures < 1:
            raise ValueError(f"failures counts from 1, got {failures}")
        delay = self.initial_s
        for _ in range(failures - 1):
            if delay >= self.max_s or self.factor == 1:
                break  # a long outage must not grow the number past float range
            delay *= self.factor
        return min(delay, self.max_s)
