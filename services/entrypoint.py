"""Command lines of the background processes `revetl up` starts: flags and logging."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.config import Settings, load_settings
from services.errors import RevetlError

log = logging.getLogger(__name__)


def process_overrides(
    prog: str, description: str, argv: Sequence[str] | None
) -> dict[str, Any]:
    """Parse `--state-dir` and `-v`, configure logging; the settings overrides.

    `--state-dir` also marks the process, so `revetl status` and `revetl down`
    find it among others of the same program.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="same as REVETL_STATE_DIR (also marks the process for `revetl status`)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug lines")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return {} if args.state_dir is None else {"state_dir": args.state_dir}


def run_server(
    name: str,
    description: str,
    serve: Callable[[Settings], None],
    argv: Sequence[str] | None,
) -> int:
    """Main of a stack server: flags, settings logged once, serve; the exit code.

    A RevetlError (a bad setting, a port taken) is logged and exits 2.
    """
    prog = f"python -m services.{name}_server"
    overrides = process_overrides(prog, description, argv)
    try:
        settings = load_settings(**overrides)
        log.info("%s starting %s", name, settings.log_summary())
        serve(settings)
    except RevetlError as exc:
        log.error("%s failed: %s", name, exc)
        return 2
    return 0
