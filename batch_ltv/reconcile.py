"""Reconciliation math: compare source truth, ClickHouse and the product DB.

Pure: the three sides arrive as plain mappings; `batch_ltv.reconcile_io` reads
them. What is checked, for every user in the source `users` table:
- ClickHouse's current LTV equals the sum of the user's sales in the source;
- the product DB has a row with that LTV, the class and the discount the rank
  rules give it.
A product-DB row for an id that is neither a user nor the owner of a sale in the
source is reported as extra (a deleted user must be gone from the product DB).
Sales whose user id has no `users` row are ranked by the pipeline too; their ids
are not reported as extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetRow:
    ltv: int
    user_class: str
    discount_pct: int


@dataclass(frozen=True)
class Difference:
    """One user on whom the sides disagree."""

    user_id: int
    kind: str
    source_ltv: int | None
    clickhouse_ltv: int | None
    target_ltv: int | None
    expected_class: str | None
    target_class: str | None


@dataclass
class Report:
    users_checked: int = 0
    clickhouse_mismatches: int = 0
    target_mismatches: int = 0
    target_missing: int = 0
    target_extra: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not (
            self.clickhouse_mismatches
            or self.target_mismatches
            or self.target_missing
            or self.target_extra
        )

    def summary(self) -> dict[str, int | bool]:
        return {
            "agrees": self.agrees,
            "users_checked": self.users_checked,
            "clickhouse_mismatches": self.clickhouse_mismatches,
            "target_mismatches": self.target_mismatches,
            "target_missing": self.target_missing,
            "target_extra": self.target_extra,
        }


def compare(
    source_ltv: Mapping[int, int],
    sale_owners: Set[int],
    clickhouse_ltv: Mapping[int, int],
    target: Mapping[int, TargetRow],
    class_for: Callable[[int], tuple[str, int]],
) -> Report:
    """Compare the sides; `source_ltv` holds every source user, 0 when no sales."""
    report = Report(users_checked=len(source_ltv))
    for user_id in sorted(source_ltv):
        ltv = source_ltv[user_id]
        expected_class, expected_discount = class_for(ltv)
        ch = clickhouse_ltv.get(user_id)
        row = target.get(user_id)
        kinds = []
        if ch != ltv:
            report.clickhouse_mismatches += 1
            kinds.append("clickhouse")
        if row is None:
            report.target_missing += 1
            kinds.append("target-missing")
        elif (row.ltv, row.user_class, row.discount_pct) != (
            ltv,
            expected_class,
            expected_discount,
        ):
            report.target_mismatches += 1
            kinds.append("target")
        if kinds:
            report.differences.append(
                Difference(
                    user_id, "+".join(kinds), ltv, ch,
                    None if row is None else row.ltv, expected_class,
                    None if row is None else row.user_class,
                )
            )  # fmt: skip
    for user_id in sorted(set(target) - set(source_ltv) - set(sale_owners)):
        report.target_extra += 1
        row = target[user_id]
        report.differences.append(
            Difference(user_id, "target-extra", None, clickhouse_ltv.get(user_id),
                       row.ltv, None, row.user_class)
        )  # fmt: skip
    return report
