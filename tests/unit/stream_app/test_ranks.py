"""Rank rules: the shipped file, class lookup, refused files, ClickHouse rendering."""

from __future__ import annotations

from pathlib import Path

import chdb
import pytest

from services.errors import ConfigurationError
from stream_app import ranks
from stream_app.ranks import RankRule, load_rules

CONTRACT = [
    ("A", 0, 0),
    ("B", 1_000_000, 5),
    ("C", 5_000_000, 10),
    ("E", 15_000_000, 15),
    ("F", 30_000_000, 20),
    ("S", 60_000_000, 25),
    ("SS", 90_000_000, 30),
]


def rules_file(tmp_path: Path, *rules: str) -> Path:
    path = tmp_path / "rank_rules.toml"
    path.write_text("\n".join(f"[[rank]]\n{rule}\n" for rule in rules))
    return path


def rule(name: str, threshold: object, discount: object) -> str:
    return (
        f'class = "{name}"\nthreshold_roubles = {threshold}\ndiscount_pct = {discount}'
    )


def test_the_shipped_file_holds_the_contract_classes() -> None:
    rules = load_rules()

    assert [
        (r.user_class, r.threshold, r.discount_pct) for r in rules.rules
    ] == CONTRACT
    assert rules.source == ranks.DEFAULT_RULES_PATH


@pytest.mark.parametrize(
    ("ltv", "expected"),
    [
        (0, ("A", 0)),
        (999_999, ("A", 0)),
        (1_000_000, ("B", 5)),
        (4_999_999, ("B", 5)),
        (5_000_000, ("C", 10)),
        (14_999_999, ("C", 10)),
        (15_000_000, ("E", 15)),
        (30_000_000, ("F", 20)),
        (59_999_999, ("F", 20)),
        (60_000_000, ("S", 25)),
        (89_999_999, ("S", 25)),
        (90_000_000, ("SS", 30)),
        (2**63 - 1, ("SS", 30)),
    ],
)
def test_class_for_takes_the_last_threshold_at_or_below_the_ltv(
    ltv: int, expected: tuple[str, int]
) -> None:
    assert ranks.class_for(ltv) == expected


def test_a_negative_ltv_has_no_class() -> None:
    with pytest.raises(ValueError, match="-1"):
        ranks.class_for(-1)


def test_a_custom_file_is_read_instead_of_the_default(tmp_path: Path) -> None:
    path = rules_file(tmp_path, rule("A", 0, 0), rule("GOLD", 100, 50))
    rules = load_rules(path)

    assert rules.rules == (RankRule("A", 0, 0), RankRule("GOLD", 100, 50))
    assert ranks.class_for(150, rules) == ("GOLD", 50)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([rule("A", 0, 0), rule("A", 10, 5)], "rule 2 (class 'A'): duplicate class"),
        (
            [rule("A", 0, 0), rule("C", 50, 5), rule("B", 20, 5)],
            "rule 3 (class 'B'): threshold_roubles 20 is not above",
        ),
        ([rule("A", 0, 0), rule("B", 0, 5)], "rule 2 (class 'B'): threshold_roubles 0"),
        (
            [rule("A", 0, 0), rule("B", -5, 5)],
            "rule 2 (class 'B'): threshold_roubles -5 is negative",
        ),
        (
            [rule("A", 10, 0)],
            "rule 1 (class 'A'): the first threshold_roubles must be 0",
        ),
        ([rule("A", 0, 101)], "rule 1 (class 'A'): discount_pct 101"),
        ([rule("A", 0, -1)], "rule 1 (class 'A'): discount_pct -1"),
        ([rule("A", 0, 2.5)], "rule 1 (class 'A'): discount_pct 2.5"),
        ([rule("a", 0, 0)], "rule 1 (class 'a'): class must be 1 to 4 capital"),
        ([rule("ABCDE", 0, 0)], "class must be 1 to 4 capital letters"),
        ([rule("A'B", 0, 0)], "class must be 1 to 4 capital letters"),
        (
            [rule("A", '"0"', 0)],
            "rule 1 (class 'A'): threshold_roubles must be an integer",
        ),
        ([rule("A", "true", 0)], "threshold_roubles must be an integer"),
        (
            ['class = "A"\nthreshold_roubles = 0'],
            "rule 1 (class 'A'): missing discount_pct",
        ),
        (
            [rule("A", 0, 0) + "\ncolour = 1"],
            "rule 1 (class 'A'): unknown key(s) colour",
        ),
    ],
)
def test_invalid_rules_are_refused_naming_the_rule_and_the_file(
    tmp_path: Path, entries: list[str], expected: str
) -> None:
    path = rules_file(tmp_path, *entries)

    with pytest.raises(ConfigurationError) as caught:
        load_rules(path)

    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_every_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    path = rules_file(tmp_path, rule("A", 0, 200), rule("b", 5, 5))

    with pytest.raises(ConfigurationError) as caught:
        load_rules(path)

    assert "rule 1 (class 'A'): discount_pct 200" in str(caught.value)
    assert "rule 2 (class 'b'): class must be" in str(caught.value)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("# nothing here\n")

    with pytest.raises(ConfigurationError, match="has no rules"):
        load_rules(path)


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="REVETL_RANK_RULES_PATH"):
        load_rules(tmp_path / "absent.toml")


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[[rank]\nclass = A\n")

    with pytest.raises(ConfigurationError, match="cannot be read as TOML"):
        load_rules(path)


def test_the_clickhouse_expression_lists_the_thresholds_highest_first() -> None:
    assert ranks.clickhouse_multiif("ltv") == (
        "multiIf(ltv >= 90000000, 'SS', ltv >= 60000000, 'S', ltv >= 30000000, 'F', "
        "ltv >= 15000000, 'E', ltv >= 5000000, 'C', ltv >= 1000000, 'B', 'A')"
    )
    assert ranks.clickhouse_multiif("t.ltv", "discount").startswith(
        "multiIf(t.ltv >= 90000000, 30, t.ltv >= 60000000, 25,"
    )


def test_a_single_rule_renders_as_a_constant(tmp_path: Path) -> None:
    rules = load_rules(rules_file(tmp_path, rule("A", 0, 3)))

    assert rules.clickhouse_expression("ltv") == "'A'"
    assert rules.clickhouse_expression("ltv", "discount") == "3"


@pytest.mark.parametrize(
    "column", ["ltv; DROP TABLE x", "1ltv", "sum(ltv)", "a.b.c", ""]
)
def test_the_clickhouse_expression_takes_only_a_column_name(column: str) -> None:
    with pytest.raises(ConfigurationError, match="not a plain identifier"):
        ranks.clickhouse_multiif(column)


def test_clickhouse_computes_the_same_classes_as_python() -> None:
    values = [0, 1, 999_999, 1_000_000, 5_000_000, 29_999_999, 30_000_000, 10**10]
    query = (
        f"SELECT ltv, {ranks.clickhouse_multiif('ltv')}, "
        f"{ranks.clickhouse_multiif('ltv', 'discount')} "
        f"FROM (SELECT arrayJoin({values}) AS ltv) ORDER BY ltv FORMAT TSV"
    )

    lines = str(chdb.query(query)).strip().splitlines()

    computed = [tuple(line.split("\t")) for line in lines]
    expected = [(str(v), *map(str, ranks.class_for(v))) for v in values]
    assert computed == expected
