"""Loyalty rank rules: LTV thresholds and discounts, read from one TOML file."""

from __future__ import annotations

import bisect
import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

from services.config import INFRA_DIR
from services.errors import ConfigurationError

DEFAULT_RULES_PATH = INFRA_DIR / "rank_rules.toml"
RULES_SETTING = "REVETL_RANK_RULES_PATH"

CLASS_NAME = re.compile(r"^[A-Z]{1,4}$")
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
RULE_ORDER = ("class", "threshold_roubles", "discount_pct")


@dataclass(frozen=True, slots=True)
class RankRule:
    """One rank class: users whose LTV is at least `threshold` roubles get it."""

    user_class: str
    threshold: int
    discount_pct: int


@dataclass(frozen=True)
class RankRules:
    """Validated rank rules, sorted by threshold, the first one starting at 0."""

    rules: tuple[RankRule, ...]
    source: Path

    def class_for(self, ltv: int) -> tuple[str, int]:
        """The rank class and discount percentage of a user with this LTV."""
        if ltv < 0:
            raise ValueError(f"LTV must not be negative, got {ltv}")
        rule = self.rules[bisect.bisect_right(self._thresholds, ltv) - 1]
        return rule.user_class, rule.discount_pct

    @functools.cached_property
    def _thresholds(self) -> tuple[int, ...]:
        return tuple(rule.threshold for rule in self.rules)

    def clickhouse_expression(
        self, column: str, value: Literal["class", "discount"] = "class"
    ) -> str:
        """A ClickHouse `multiIf(...)` giving the class (or discount) of `column`.

        Only validated class names and integers reach the text, so it is safe to
        embed in SQL; the column name must be a plain or table-qualified identifier.
        """
        if not COLUMN_NAME.fullmatch(column):
            message = (
                f"column {column!r} is not a plain identifier like `ltv` or "
                "`t.ltv`; pass the column name, not an expression"
            )
            raise ConfigurationError(message)
        branches = []
        for rule in reversed(self.rules[1:]):
            branches.append(f"{column} >= {rule.threshold}")
            branches.append(_rendered(rule, value))
        fallback = _rendered(self.rules[0], value)
        if not branches:
            return fallback
        return f"multiIf({', '.join([*branches, fallback])})"


def _rendered(rule: RankRule, value: Literal["class", "discount"]) -> str:
    return f"'{rule.user_class}'" if value == "class" else str(rule.discount_pct)


def load_rules(path: Path = DEFAULT_RULES_PATH) -> RankRules:
    """Read and validate the rules file; every problem is named in one error."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        message = f"rank rules file {path} not found: create it or set {RULES_SETTING}"
        raise ConfigurationError(message) from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        message = f"rank rules file {path} cannot be read as TOML: {exc}"
        raise ConfigurationError(message) from exc
    return parse_rules(document, path)


def parse_rules(document: Mapping[str, Any], source: Path) -> RankRules:
    """Validate a parsed rules document (`[[rank]]` tables) into `RankRules`."""
    entries = document.get("rank")
    if not isinstance(entries, list) or not entries:
        message = (
            f"rank rules file {source} has no rules: it needs `[[rank]]` tables "
            "with class, threshold_roubles and discount_pct"
        )
        raise ConfigurationError(message)
    problems: list[str] = []
    rules = [_parse_rule(i, entry, problems) for i, entry in enumerate(entries, 1)]
    valid = [rule for rule in rules if rule is not None]
    if len(valid) == len(rules):
        problems.extend(_order_problems(valid))
    if problems:
        message = f"invalid rank rules in {source}:\n  " + "\n  ".join(problems)
        raise ConfigurationError(message)
    return RankRules(tuple(valid), source)


def _parse_rule(number: int, entry: object, problems: list[str]) -> RankRule | None:
    if not isinstance(entry, dict):
        problems.append(f"rule {number}: expected a [[rank]] table, got {entry!r}")
        return None
    name, threshold, discount = (entry.get(key) for key in RULE_ORDER)
    label = f"rule {number} (class {name!r})"
    found = len(problems)
    missing = [key for key in RULE_ORDER if key not in entry]
    unknown = sorted(entry.keys() - set(RULE_ORDER))
    if missing:
        problems.append(f"{label}: missing {', '.join(missing)}")
    if unknown:
        problems.append(f"{label}: unknown key(s) {', '.join(unknown)}")
    if name is not None and not (isinstance(name, str) and CLASS_NAME.match(name)):
        problems.append(f"{label}: class must be 1 to 4 capital letters A-Z")
    if threshold is not None and not _is_int(threshold):
        problems.append(f"{label}: threshold_roubles must be an integer")
    elif _is_int(threshold) and threshold < 0:
        problems.append(f"{label}: threshold_roubles {threshold} is negative")
    if discount is not None and not (_is_int(discount) and 0 <= discount <= 100):
        problems.append(f"{label}: discount_pct {discount!r} is not an integer 0..100")
    if len(problems) > found:
        return None
    if isinstance(name, str) and _is_int(threshold) and _is_int(discount):
        return RankRule(name, threshold, discount)
    return None  # a missing key, already reported above


def _order_problems(rules: list[RankRule]) -> list[str]:
    problems = []
    if rules[0].threshold != 0:
        problems.append(
            f"rule 1 (class {rules[0].user_class!r}): the first threshold_roubles "
            f"must be 0 so every LTV has a class, got {rules[0].threshold}"
        )
    seen: dict[str, int] = {}
    for number, rule in enumerate(rules, 1):
        label = f"rule {number} (class {rule.user_class!r})"
        if rule.user_class in seen:
            problems.append(
                f"{label}: duplicate class, already rule {seen[rule.user_class]}"
            )
        seen.setdefault(rule.user_class, number)
        if number > 1 and rule.threshold <= rules[number - 2].threshold:
            problems.append(
                f"{label}: threshold_roubles {rule.threshold} is not above the "
                f"previous rule's {rules[number - 2].threshold}; keep them sorted"
            )
    return problems


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@functools.cache
def default_rules() -> RankRules:
    """The rules of the default file, read once per process."""
    return load_rules(DEFAULT_RULES_PATH)


def class_for(ltv: int, rules: RankRules | None = None) -> tuple[str, int]:
    """The (class, discount percentage) for an LTV, by default from the default file."""
    return (rules or default_rules()).class_for(ltv)


def clickhouse_multiif(
    column: str,
    value: Literal["class", "discount"] = "class",
    rules: RankRules | None = None,
) -> str:
    """The rules as a ClickHouse `multiIf(...)` over `column`, for the batch code."""
    return (rules or default_rules()).clickhouse_expression(column, value)


class RulesFile:
    """The rules of one file, read again when the file changes.

    A long-running worker asks for `current()` before each batch; a changed
    modification time or size means the file is parsed again. A file that no
    longer parses keeps the last good rules and reports the problem once per
    change, so an edit in progress never stops ranking.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules = load_rules(path)
        self._stamp = self._read_stamp()
        self.problem: str | None = None

    def current(self) -> tuple[RankRules, bool]:
        """The rules to rank with, and whether they changed since the last call."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return self.rules, False
        self._stamp = stamp
        try:
            rules = load_rules(self.path)
        except ConfigurationError as exc:
            self.problem = str(exc)
            return self.rules, False
        self.problem = None
        changed = rules.rules != self.rules.rules
        self.rules = rules
        return rules, changed

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size


def describe(rules: RankRules) -> str:
    """The rules in one line: `A>=0,B>=1000000,...`."""
    return ",".join(f"{r.user_class}>={r.threshold}" for r in rules.rules)
