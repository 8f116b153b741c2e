"""Find an external program a test needs; in CI a missing one fails, not skips."""

from __future__ import annotations

import os
import shutil

import pytest


def required_tool(executable: str, package: str, require_env: str) -> str:
    """The path of executable. Skips the test when it is missing, unless the
    environment variable require_env is "1" (CI sets it), which fails it."""
    path = shutil.which(executable)
    if path is not None:
        return path
    message = f"{executable} is not installed: `apt-get install {package}`"
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{message} ({require_env}=1 requires it)")
    pytest.skip(message)
