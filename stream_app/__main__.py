"""`python -m stream_app`: run the stream worker in the foreground."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from services.entrypoint import process_overrides
from services.errors import RevetlError
from stream_app.app import run_worker
from stream_app.config import load_worker_settings

log = logging.getLogger("stream_app")


def main(argv: Sequence[str] | None = None) -> int:
    overrides = process_overrides(
        "python -m stream_app",
        "Apply LTV changes from Kafka as loyalty ranks in the target Postgres. "
        "Settings come from REVETL_* variables; stop with SIGTERM.",
        argv,
    )
    try:
        return run_worker(load_worker_settings(**overrides))
    except RevetlError as exc:
        log.error("worker failed: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
