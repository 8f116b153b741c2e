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

from rich.console import Console
from rich.table import Table

from services import jars, process
from services.component import StartTimeout
from services.config import Settings, load_settings
from services.errors import RevetlError
from services.health import Status
from services.stack import Stack, StartResult, down, status, up

log = logging.getLogger("revetl")
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False)

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
    p.add_argument("component", help="e.g. kafka, connect, clickhouse, source-pg")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show")
    p.set_defaults(handler=cmd_logs)
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
        up(stack, settings.start_timeout_s, on_ready)
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
