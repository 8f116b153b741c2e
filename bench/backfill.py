"""Backfill timings on the live stack: history over a year and a full re-rank.

Run it after seeding and streaming the default data set, e.g.
`revetl seed --users 10000` then `make bench-backfill`. It waits until the
pipeline has drained, then times `backfill history` over DAYS days ending at the
last seeded sale day, and `backfill target` as a dry run and as a real run.
"""

from __future__ import annotations

import argparse
import time
from datetime import date, timedelta

from report import write_result
from rich.console import Console

from batch_ltv.backfill_io import backfill_history, backfill_target
from batch_ltv.reconcile_io import pipeline_lag
from services.config import load_settings
from services.stack import Stack

LAST_DAY = date(2025, 10, 12)
"""The last day the default seed has sales on (`revetl seed --until 2025-10-13`)."""


def wait_drained(stack: Stack, console: Console, timeout_s: float = 1800.0) -> float:
    """Seconds until ClickHouse and the worker have read everything."""
    began = time.monotonic()
    while not (lag := pipeline_lag(stack)).drained:
        if time.monotonic() - began > timeout_s:
            raise SystemExit(f"pipeline still behind after {timeout_s:.0f} s: {lag}")
        console.print(f"waiting for the pipeline: {lag}")
        time.sleep(5)
    return time.monotonic() - began


def counts(stack: Stack) -> dict[str, int]:
    with stack.clickhouse.client() as client:
        rows = client.query(
            "SELECT (SELECT count() FROM revetl.users FINAL), "
            "(SELECT count() FROM revetl.sales FINAL)"
        ).result_rows
    return {"users": int(rows[0][0]), "sales": int(rows[0][1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=365, help="history days")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each")
    args = parser.parse_args()
    console = Console()
    settings = load_settings()
    stack = Stack.from_settings(settings)
    drained_after = wait_drained(stack, console)
    first = LAST_DAY - timedelta(days=args.days - 1)
    result: dict[str, object] = {**counts(stack), "waited_for_drain_s": drained_after}

    history = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        run = backfill_history(settings, first, LAST_DAY)
        history.append({"seconds": time.perf_counter() - began, "rows": run.rows})
    result["history"] = {"days": args.days, "first": str(first), "runs": history}

    for dry_run in (True, False):
        runs = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            target = backfill_target(settings, dry_run=dry_run)
            runs.append(
                {
                    "seconds": time.perf_counter() - began,
                    "users": target.users,
                    "fresh": target.fresh,
                }
            )
        result["target_dry_run" if dry_run else "target"] = runs

    write_result("backfill", result, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
