"""The `revetl` command line: set up, start, inspect and stop the stack."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import date

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from batch_ltv.reconcile import Report
from services import cli_backfill, jars, process
from services.component import StartTimeout
from services.config import Settings, load_settings
from services.console import err, out
from services.errors import RevetlError
from services.health import Status
from services.stack import Stack, StartResult, down, status
from services.wiring import bring_up

log = logging.getLogger("revetl")

JAVA_PACKAGE = "openjdk-17-jre-headless"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = load_settings()
        log.info("settings %s", settings.log_summary())
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except RevetlError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revetl",
        description="Streaming CDC reverse-ETL: sales in Postgres to loyalty ranks "
        "in the product database. Settings come from REVETL_* variables.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: lifecycle lines, -vv: debug",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("setup", help="check prerequisites and fetch the jars")
    p.set_defaults(handler=cmd_setup)
    p = sub.add_parser("up", help="start the stack and wait until it is healthy")
    p.set_defaults(handler=cmd_up)
    p = sub.add_parser("down", help="stop every component we started")
    p.set_defaults(handler=cmd_down)
    p = sub.add_parser("status", help="state of each component")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("logs", help="show a component's log")
    p.add_argument(
        "component",
        help="source-pg, target-pg, kafka, clickhouse, connect, worker or monitor",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show")
    p.set_defaults(handler=cmd_logs)
    p = sub.add_parser(
        "seed", help="fill the source with generated users and sales (Faker ru_RU)"
    )
    p.add_argument("--users", type=int, default=10_000, help="how many users")
    p.add_argument(
        "--max-sales-per-user",
        type=int,
        default=1_000,
        help="each user gets a uniform 0..M sales",
    )
    p.add_argument("--seed", type=int, default=42, help="same seed, same rows")
    p.add_argument(
        "--until",
        type=date.fromisoformat,
        default=date(2025, 10, 13),
        help="sales are dated before this day (YYYY-MM-DD)",
    )
    p.set_defaults(handler=cmd_seed)
    p = sub.add_parser(
        "demo", help="a burst of sales to a few shoppers; watch their ranks change"
    )
    p.add_argument("--users", type=int, default=20, help="demo shoppers")
    p.add_argument("--rate", type=int, default=300, help="sales per second")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to shop")
    p.add_argument("--seed", type=int, default=7, help="names and purchases")
    p.set_defaults(handler=cmd_demo)
    p = sub.add_parser("worker", help="run the stream worker in the foreground")
    p.set_defaults(handler=cmd_worker)
    p = sub.add_parser(
        "reconcile",
        help="recompute every LTV and class from the source and compare with "
        "ClickHouse and the product DB; exit 0 only if all three agree",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the pipeline to drain and agree",
    )
    p.add_argument(
        "--show", type=int, default=20, help="how many differing users to list"
    )
    p.set_defaults(handler=cmd_reconcile)
    p = sub.add_parser(
        "lag",
        help="where data waits: lag per stage, freshness, connectors, ClickHouse "
        "consumers, worker (from the monitor, or collected here if it is down)",
    )
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--json", action="store_true", help="the monitor's /api/state")
    p.set_defaults(handler=cmd_lag)
    cli_backfill.add_parser(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    problems = check_prerequisites(settings)
    if problems:
        err.print("[red]missing prerequisites:[/red]", markup=True)
        for line in problems:
            err.print(f"  - {line}")
        return 2
    out.print("prerequisites: java 17+, mvn, postgres 15 binaries [green]ok[/green]")
    downloads = {"count": 0}

    with out.status("resolving jars with mvn") as spinner:

        def on_line(name: str, line: str) -> None:
            if line.startswith("Downloaded from"):
                downloads["count"] += 1
                artifact = line.rsplit("/", 1)[-1]
                spinner.update(
                    f"{name}: {downloads['count']} files downloaded, last {artifact}"
                )

        results = jars.fetch(settings, on_line)
    for js, fetched, seconds in results:
        total = sum(j.stat().st_size for j in js.jars()) / 2**20
        how = f"fetched in {seconds:.1f} s" if fetched else "cached"
        out.print(f"jars {js.name}: {len(js.jars())} jars, {total:.0f} MiB, {how}")
    return 0


def check_prerequisites(settings: Settings) -> list[str]:
    """Every missing tool, each with the Debian package that brings it."""
    problems = []
    java_major = _java_major(settings.java)
    if java_major is None:
        problems.append(f"java not found: apt-get install {JAVA_PACKAGE}")
    elif java_major < 17:
        problems.append(
            f"java {java_major} is too old (17+ needed): apt-get install {JAVA_PACKAGE}"
        )
    if shutil.which(settings.mvn) is None:
        problems.append("mvn not found: apt-get install maven")
    if not (settings.pg_bin_dir / "postgres").exists():
        problems.append(
            f"no Postgres server in {settings.pg_bin_dir}: "
            "apt-get install postgresql-15"
        )
    return problems


def _java_major(java: str) -> int | None:
    if shutil.which(java) is None:
        return None
    result = subprocess.run(
        [java, "-version"], capture_output=True, text=True, check=False
    )
    match = re.search(r'version "(\d+)', result.stderr)
    return int(match.group(1)) if match else None


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    stack = Stack.from_settings(settings)
    began = time.monotonic()

    def on_ready(result: StartResult) -> None:
        how = "started" if result.started else "already running"
        if result.status.pid is None:
            how = "external"
        out.print(
            f"[green]✓[/green] {result.status.name:<11} {how:<16} "
            f"{result.status.address}  ({result.seconds:.1f} s)",
            markup=True,
        )

    try:
        bring_up(stack, settings.start_timeout_s, on_ready)
    except StartTimeout as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        for line in exc.log_tail:
            err.print(f"  {line}", markup=False)
        return 1
    out.print(_status_table(status(stack)))
    out.print(f"stack up in {time.monotonic() - began:.1f} s")
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    stack = Stack.from_settings(settings)
    for name, was_running in down(stack):
        word = "stopped" if was_running else "not running"
        out.print(f"{name:<11} {word}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    rows = status(Stack.from_settings(settings))
    if args.json:
        out.print_json(json.dumps([r.as_json() for r in rows]))
    else:
        out.print(_status_table(rows))
    return 0 if all(r.healthy for r in rows) else 1


def _status_table(rows: list[Status]) -> Table:
    table = Table(title="revetl stack", title_justify="left")
    for column in ("component", "state", "pid", "address", "version", "detail"):
        table.add_column(column)
    colors = {"healthy": "green", "external": "green", "stopped": "dim"}
    for row in rows:
        color = colors.get(row.state.value, "red")
        table.add_row(
            row.name,
            f"[{color}]{row.state.value}[/{color}]",
            "" if row.pid is None else str(row.pid),
            row.address,
            row.version or "",
            row.detail,
        )
    return table


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    stack = Stack.from_settings(settings)
    try:
        component = stack.by_name(args.component)
    except KeyError as exc:
        err.print(f"[red]error:[/red] {exc.args[0]}", markup=True)
        return 2
    log_file = component.spec().log_file
    if not log_file.exists():
        err.print(f"{component.name} has no log yet ({log_file})")
        return 1
    for line in process.tail(log_file, args.lines):
        out.print(line, markup=False, highlight=False)
    if args.follow:
        return _follow(log_file)
    return 0


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from batch_ltv.seed_io import seed

    source = Stack.from_settings(settings).source_pg
    columns = (
        TextColumn("seeding"), BarColumn(), MofNCompleteColumn(),
        TextColumn("rows"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=out) as progress:
        task = progress.add_task("seed", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = seed(
            source.dsn(), args.users, args.max_sales_per_user, args.seed,
            args.until, on_progress,
        )  # fmt: skip
    if result.users_added == 0 and result.sales_added == 0:
        out.print("nothing to add: this seed's rows are already in the source")
        return 0
    out.print(
        f"added {result.users_added:,} users and {result.sales_added:,} sales in "
        f"{result.seconds:.1f} s ({result.sales_per_second:,.0f} sales/s); CDC "
        "carries them to ClickHouse and the product DB"
    )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from services import demo

    stack = Stack.from_settings(settings)
    unhealthy = [r.name for r in status(stack) if not r.healthy]
    if unhealthy:
        err.print(f"not running: {', '.join(unhealthy)}; start it with `revetl up`")
        return 1
    from batch_ltv.reconcile_io import pipeline_lag

    users = demo.ensure_users(stack, args.users, args.seed)
    with out.status("waiting for the pipeline to catch up") as spinner:
        while not (lag := pipeline_lag(stack)).drained:
            spinner.update(
                f"waiting for the pipeline to catch up: ClickHouse has "
                f"{lag.clickhouse:,} change events to read, the worker "
                f"{lag.worker:,} LTV messages"
            )
            time.sleep(1.0)
    out.print(
        f"{len(users)} shoppers buy {args.rate} times a second for {args.seconds:.0f}"
        " s; each line is a rank change read back from the product DB "
        "(lag = source commit to product DB)"
    )
    out.print(
        f"watch the stages live at {stack.monitor.url}/ or with `revetl lag --watch`"
    )
    after = demo.last_change_id(stack)
    changes = 0

    def drained() -> bool:
        return pipeline_lag(stack).drained

    shopping = demo.shop(
        stack, users, args.rate, args.seconds, args.seed, after, drained
    )
    for item in shopping:
        if isinstance(item, int):
            continue
        changes += 1
        old = item.old_class or "-"
        out.print(
            f"  {item.name:<28} {old:>2} → {item.new_class or '-':<2} "
            f"LTV {item.ltv:>12,} ₽   lag {item.lag_s:5.2f} s"
        )
    out.print(f"{changes} rank changes; checking the three sides agree…")
    from batch_ltv.reconcile_io import reconcile
    from stream_app.config import load_worker_settings
    from stream_app.ranks import load_rules

    rules = load_rules(load_worker_settings().rank_rules_path)
    report = reconcile(stack, rules, 120.0, lambda lag, r: None)
    _print_report(report, 10)
    return 0 if report.agrees else 1


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from stream_app.app import run_worker
    from stream_app.config import load_worker_settings

    logging.getLogger().setLevel(logging.INFO)
    return run_worker(load_worker_settings())


def cmd_lag(args: argparse.Namespace, settings: Settings) -> int:
    from services import lag_view

    stack = Stack.from_settings(settings)
    return lag_view.run(stack, out, watch=args.watch, as_json=args.json)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from batch_ltv.reconcile_io import Lag, reconcile
    from stream_app.config import load_worker_settings
    from stream_app.ranks import load_rules

    worker = load_worker_settings()
    stack = Stack.from_settings(settings)
    began = time.monotonic()

    def on_wait(lag: Lag | None, report: Report | None) -> None:
        if args.json or lag is None:
            return
        state = "draining" if not lag.drained else "re-checking differences"
        err.print(
            f"waiting ({time.monotonic() - began:.0f} s): {state}; lag clickhouse="
            f"{lag.clickhouse} worker={lag.worker}"
        )

    rules = load_rules(worker.rank_rules_path)
    report = reconcile(stack, rules, args.timeout, on_wait)
    if args.json:
        data = {
            **report.summary(),
            "differences": [asdict(d) for d in report.differences[: args.show]],
        }
        out.print_json(json.dumps(data))
    else:
        _print_report(report, args.show)
    return 0 if report.agrees else 1


def _print_report(report: Report, show: int) -> None:
    verdict = "[green]agree[/green]" if report.agrees else "[red]DISAGREE[/red]"
    out.print(
        f"source, ClickHouse and product DB {verdict}: {report.users_checked} users "
        f"checked; ClickHouse LTV wrong {report.clickhouse_mismatches}, product DB "
        f"wrong {report.target_mismatches}, missing {report.target_missing}, "
        f"extra {report.target_extra}",
        markup=True,
    )
    if not report.differences:
        return
    table = Table(title=f"first {min(show, len(report.differences))} differences")
    for column in (
        "user",
        "kind",
        "source LTV",
        "ClickHouse LTV",
        "product LTV",
        "expected class",
        "product class",
    ):
        table.add_column(column)
    for d in report.differences[:show]:
        table.add_row(*("" if v is None else str(v) for v in (
            d.user_id, d.kind, d.source_ltv, d.clickhouse_ltv, d.target_ltv,
            d.expected_class, d.target_class)))  # fmt: skip
    out.print(table)


def _follow(path: object) -> int:
    with open(str(path), "rb") as f:
        f.seek(0, 2)
        while True:
            chunk = f.readline()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.3)


if __name__ == "__main__":
    sys.exit(main())
