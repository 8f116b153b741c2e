"""Where bench scripts keep their results: one JSON file per run, also printed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, result: object, console: Console | None = None) -> Path:
    """Write `result` to bench/results/<name>-<time>.json and print it."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console = console or Console()
    console.print_json(json.dumps(result))
    console.print(f"written to {out}")
    return out
