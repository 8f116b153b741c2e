"""`revetl backfill`: the history and target backfills and their run records."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from batch_ltv.backfill import BackfillRun, TargetBackfill, parse_day
from services.config import Settings
from services.console import err, out
from services.errors import ConfigurationError
from stream_app.ranks import RankRules, load_rules


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `backfill history|target|runs` to the `revetl` parser."""
    backfill = sub.add_parser(
        "backfill", help="recompute the LTV history or the product DB's ranks"
    )
    kinds = backfill.add_subparsers(required=True, metavar="KIND")

    p = kinds.add_parser(
        "history",
        help="daily LTV and class of every user into ClickHouse "
        "dds.user_ltv_history (a range run again is replaced)",
    )
    p.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD",
                   help="first execution day")  # fmt: skip
    p.add_argument("--to", dest="last", required=True, metavar="YYYY-MM-DD",
                   help="last execution day, included")  # fmt: skip
    _common(p)
    p.set_defaults(handler=cmd_history)

    p = kinds.add_parser(
        "target",
        help="recompute every user's LTV and class in ClickHouse and write the "
        "product DB through the stream's guarded upsert (also applies new rules)",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="count who would change class, from what to what; "
                   "write nothing")  # fmt: skip
    _common(p)
    p.set_defaults(handler=cmd_target)

    p = kinds.add_parser("runs", help="the latest backfill runs, newest first")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_runs)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", type=Path, default=None, metavar="TOML",
                   help="rank rules file (default REVETL_RANK_RULES_PATH)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    from batch_ltv.backfill_io import backfill_history

    try:
        first = parse_day(args.first, "--from")
        last = parse_day(args.last, "--to")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    with _progress("days", args.json) as on_progress:
        run = backfill_history(
            settings, first, last, rules=_rules(args), on_progress=on_progress
        )
    if args.json:
        out.print_json(json.dumps(run.as_dict()))
        return 0
    out.print(
        f"backfill #{run.id}: {run.rows:,} rows for {first} .. {last} "
        f"({run.detail}) into dds.user_ltv_history in {run.seconds or 0:.1f} s"
    )
    return 0


def cmd_target(args: argparse.Namespace, settings: Settings) -> int:
    from batch_ltv.backfill_io import backfill_target

    with _progress("users", args.json) as on_progress:
        result = backfill_target(
            settings, dry_run=args.dry_run, rules=_rules(args), on_progress=on_progress
        )
    if args.json:
        out.print_json(json.dumps(result.summary()))
    else:
        _print_target(result)
    return 0


def _print_target(result: TargetBackfill) -> None:
    run = result.run
    if result.dry_run:
        head = (
            f"dry run #{run.id}: {result.class_changes:,} of {result.users:,} users "
            f"would change class; {result.fresh:,} rows would be written. Nothing "
            "was written."
        )
    else:
        head = (
            f"backfill #{run.id}: {result.class_changes:,} of {result.users:,} users "
            f"changed class; {result.fresh:,} rows written, {result.deletes:,} "
            f"deleted, in {run.seconds or 0:.1f} s"
        )
    out.print(head)
    for line in result.moves_text():
        out.print(f"  {line}")


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from batch_ltv.backfill_io import recent_runs

    runs = recent_runs(settings, args.limit)
    if args.json:
        out.print_json(json.dumps([run.as_dict() for run in runs]))
        return 0
    if not runs:
        out.print("no backfill has run yet")
        return 0
    out.print(_runs_table(runs))
    return 0


def _runs_table(runs: list[BackfillRun]) -> Table:
    table = Table(title="backfill runs, newest first")
    for column in ("id", "kind", "started", "seconds", "rows", "outcome", "detail"):
        table.add_column(
            column, justify="right" if column in ("id", "rows") else "left"
        )
    for run in runs:
        seconds = "" if run.seconds is None else f"{run.seconds:.1f}"
        started = run.started_at.strftime("%Y-%m-%d %H:%M:%S %Z")
        table.add_row(str(run.id), run.kind, started, seconds, f"{run.rows:,}",
                      run.outcome, run.detail)  # fmt: skip
    return table


def _rules(args: argparse.Namespace) -> RankRules | None:
    return None if args.rules is None else load_rules(args.rules)


@contextmanager
def _progress(unit: str, quiet: bool) -> Iterator[_Callback]:
    if quiet:
        yield _Callback(None, None)
        return
    columns = (
        TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        TaskProgressColumn(), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err, transient=True) as progress:
        yield _Callback(progress, progress.add_task("backfill", total=None))


class _Callback:
    """A progress callback for the backfill functions, drawing a rich bar."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self.progress = progress
        self.task = task

    def __call__(self, done: int, total: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=done, total=total)
