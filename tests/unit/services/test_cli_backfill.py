"""`revetl backfill` refuses bad arguments before it touches any server."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    """Standard error with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def test_reversed_range_exits_2_naming_the_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["backfill", "history", "--from", "2025-02-01", "--to", "2025-01-31"])
    assert code == 2
    assert "--from 2025-02-01 is after --to 2025-01-31" in _err(capsys)


def test_a_day_that_does_not_exist_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["backfill", "history", "--from", "2025-02-30", "--to", "2025-03-01"])
    assert code == 2
    assert "--from '2025-02-30' is not a day" in _err(capsys)


def test_a_bad_rules_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"{tmp_path}/nope.toml"
    code = main(["backfill", "target", "--dry-run", "--rules", missing])
    assert code == 2
    assert "nope.toml not found: create it or set REVETL_RANK_RULES_PATH" in _err(
        capsys
    )
