"""A rules file read again when it changes, keeping the last good rules."""

from __future__ import annotations

import os
from pathlib import Path

from stream_app.ranks import DEFAULT_RULES_PATH, RulesFile, describe

C_AT_5M = "threshold_roubles = 5_000_000"


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(DEFAULT_RULES_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _edit(path: Path, old: str, new: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(path.read_text(encoding="utf-8").replace(old, new))
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a visible change


def test_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    watched = RulesFile(_copy(tmp_path))
    rules, changed = watched.current()
    assert not changed
    assert rules is watched.rules
    assert rules.class_for(4_000_000) == ("B", 5)


def test_a_new_threshold_is_picked_up_once(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    watched = RulesFile(path)
    _edit(path, C_AT_5M, "threshold_roubles = 3_000_000")

    rules, changed = watched.current()
    assert changed
    assert rules.class_for(4_000_000) == ("C", 10)
    assert "C>=3000000" in describe(rules)
    assert watched.current() == (rules, False)


def test_a_broken_edit_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    watched = RulesFile(path)
    _edit(path, C_AT_5M, "threshold_roubles = -1")

    rules, changed = watched.current()
    assert not changed
    assert rules.class_for(4_000_000) == ("B", 5)
    assert watched.problem is not None and "negative" in watched.problem

    _edit(path, "threshold_roubles = -1", "threshold_roubles = 3_000_000")
    rules, changed = watched.current()
    assert changed and watched.problem is None
    assert rules.class_for(4_000_000) == ("C", 10)


def test_a_removed_file_keeps_the_rules(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    watched = RulesFile(path)
    path.unlink()
    rules, changed = watched.current()
    assert not changed
    assert rules.class_for(1_000_000) == ("B", 5)
    assert watched.problem is not None and "not found" in watched.problem
