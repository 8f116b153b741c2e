"""The `promtool` fixture: Debian's promtool, required in CI."""

from __future__ import annotations

import pytest
from required_tools import required_tool

REQUIRE_ENV = "REVETL_REQUIRE_PROMTOOL"


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool's path; missing, it skips, or fails when REVETL_REQUIRE_PROMTOOL=1."""
    return required_tool("promtool", "prometheus", REQUIRE_ENV)
