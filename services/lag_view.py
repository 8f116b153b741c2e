"""`revetl lag`: the monitor's state as rich tables, once or refreshed in place."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.monitor_collect import Collector
from services.monitor_state import state_json
from services.stack import Stack

State = dict[str, Any]


class StateSource:
    """The monitor's /api/state, or the same document collected in this process
    when the monitor does not answer."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.collector: Collector | None = None

    @property
    def in_process(self) -> bool:
        return self.collector is not None

    def read(self) -> State:
        if self.collector is None:
            try:
                state: State = self.stack.monitor.get_json("/api/state")
                return state
            except (OSError, ValueError):
                self.collector = Collector(self.stack)
        return state_json(self.collector.collect())

    def note(self) -> str:
        if self.in_process:
            return (
                "the monitor is not running (`revetl up` starts it): collected "
                "in this process"
            )
        return f"from the monitor at {self.stack.monitor.url}"

    def close(self) -> None:
        if self.collector is not None:
            self.collector.close()


def run(stack: Stack, console: Console, watch: bool, as_json: bool) -> int:
    """Print the state once, or keep refreshing it until Ctrl-C; the exit status."""
    source = StateSource(stack)
    try:
        if watch:
            _watch(source, console, stack.settings.monitor_interval_s, as_json)
            return 0
        state = source.read()
        if as_json:
            console.print_json(json.dumps(state))
        else:
            console.print(render(state, source.note()))
        return 0
    finally:
        source.close()


def _watch(
    source: StateSource, console: Console, interval_s: float, as_json: bool
) -> None:
    def view() -> RenderableType:
        state = source.read()
        if as_json:
            return Text(json.dumps(state, indent=2))
        return render(state, source.note() + "; Ctrl-C to stop")

    with Live(view(), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                live.update(view(), refresh=True)
        except KeyboardInterrupt:
            return


def render(state: State, note: str) -> RenderableType:
    """Every table of the state, headed by freshness."""
    parts: list[RenderableType] = [
        _headline(state),
        _components(state),
        _stages(state),
        _connectors(state),
        _consumers(state),
        _worker(state),
    ]
    if state.get("errors"):
        parts.append(Text("errors: " + "; ".join(state["errors"]), style="red"))
    parts.append(Text(note, style="dim"))
    return Group(*parts)


def _headline(state: State) -> Text:
    fresh = state.get("freshness_seconds")
    when = time.strftime("%H:%M:%S", time.localtime(state.get("time", 0)))
    dead = state.get("dead_letters", {})
    text = Text(f"{when}  freshness ")
    if fresh is None:
        text.append("unknown", style="yellow")
    else:
        text.append(f"{fresh:.1f} s", style="green" if fresh < 5 else "red")
    text.append(
        f"   dead letters: clickhouse {_n(dead.get('clickhouse'))}, worker "
        f"{_n(dead.get('worker'))}"
    )
    return text


def _components(state: State) -> Text:
    rows = state.get("components", [])
    sick = [f"{c['name']} {c['state']}" for c in rows if not c["healthy"]]
    if not sick:
        return Text(f"components: all {len(rows)} healthy", style="green")
    return Text("components not healthy: " + ", ".join(sick), style="red")


def _stages(state: State) -> Table:
    table = Table(title="lag per stage", title_justify="left")
    for column in ("stage", "lag", "unit", "detail"):
        table.add_column(column, justify="right" if column == "lag" else "left")
    for stage in state.get("stages", []):
        table.add_row(stage["name"], _n(stage["lag"]), stage["unit"], stage["detail"])
    return table


def _connectors(state: State) -> Table:
    table = Table(title="connectors", title_justify="left")
    for column in ("connector", "task", "state"):
        table.add_column(column)
    for row in state.get("connectors", []):
        color = "green" if row["up"] else "red"
        state_text = f"[{color}]{row['state']}[/{color}]"
        table.add_row(row["connector"], row["task"], state_text)
    return table


def _consumers(state: State) -> Table:
    table = Table(title="ClickHouse Kafka consumers", title_justify="left")
    table.add_column("table")
    for column in ("last poll (s ago)", "messages read", "exceptions"):
        table.add_column(column, justify="right")
    for row in state.get("clickhouse_consumers", []):
        age = row["last_poll_age_seconds"]
        table.add_row(
            row["table"],
            "never" if age is None else f"{age:.0f}",
            _n(row["messages_read"]),
            _n(row["exceptions"]),
        )
    return table


def _worker(state: State) -> Table:
    worker = state.get("worker", {})
    latency = worker.get("latency_seconds", {})
    table = Table(title="worker", title_justify="left")
    columns = ("up", "events", "upserts", "rank changes", "dead letters")
    for column in (*columns, "latency p50 / p95 / p99 (last 60 s)"):
        table.add_column(column, justify="right")
    up = "[green]yes[/green]" if worker.get("up") else "[red]no[/red]"
    percentiles = " / ".join(
        "-" if latency.get(q) is None else f"{latency[q]:.2f} s"
        for q in ("p50", "p95", "p99")
    )
    table.add_row(
        up,
        _n(worker.get("events")),
        _n(worker.get("upserts")),
        _n(worker.get("rank_changes")),
        _n(worker.get("dead_letters")),
        f"{percentiles} ({latency.get('count', 0)} events)",
    )
    return table


def _n(value: float | None) -> str:
    """A number with thousands separators, '-' when unknown."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
