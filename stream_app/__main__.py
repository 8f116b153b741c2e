"""`python -m stream_app`: run the stream worker in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.errors import RevetlError
from stream_app.app import run_worker
from stream_app.config import load_worker_settings

log = logging.getLogger("stream_app")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream_app",
        description="Apply LTV changes from Kafka as loyalty ranks in the target "
        "Postgres. Settings come from REVETL_* variables; stop with SIGTERM.",
    )
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
    overrides: dict[str, Any] = {}
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    try:
        return run_worker(load_worker_settings(**overrides))
    except RevetlError as exc:
        log.error("worker failed: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
