"""The whole stack: which components exist, in which order they start and stop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.clickhouse import ClickHouseServer
from services.component import Component
from services.config import Settings
from services.connect import ConnectWorker
from services.health import Status
from services.kafka import KafkaBroker
from services.monitor import Monitor
from services.postgres import PostgresCluster
from services.relay import LtvRelay
from services.worker import StreamWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stack:
    """The components, by role. Extra components (the worker) join later."""

    settings: Settings
    source_pg: PostgresCluster
    target_pg: PostgresCluster
    kafka: KafkaBroker
    clickhouse: ClickHouseServer
    relay: LtvRelay
    connect: ConnectWorker
    worker: StreamWorker
    monitor: Monitor

    @classmethod
    def from_settings(cls, settings: Settings) -> Stack:
        return cls(
            settings=settings,
            source_pg=PostgresCluster(settings, "source"),
            target_pg=PostgresCluster(settings, "target"),
            kafka=KafkaBroker(settings),
            clickhouse=ClickHouseServer(settings),
            relay=LtvRelay(settings),
            connect=ConnectWorker(settings),
            worker=StreamWorker(settings),
            monitor=Monitor(settings),
        )

    def waves(self) -> list[list[Component]]:
        """Start order: each wave starts together once the one before is healthy.

        Between waves the pipeline is wired (services.wiring): storage before
        Connect captures changes, the connector before the worker consumes; the
        monitor last, so its first collection sees the whole pipeline. The relay
        comes with ClickHouse, which sends it LTV changes as soon as the
        pipeline exists.
        """
        return [
            [self.source_pg, self.target_pg, self.kafka, self.clickhouse, self.relay],
            [self.connect],
            [self.worker, self.monitor],
        ]

    def components(self) -> list[Component]:
        return [c for wave in self.waves() for c in wave]

    def by_name(self, name: str) -> Component:
        for component in self.components():
            if component.name == name:
                return component
        known = ", ".join(c.name for c in self.components())
        raise KeyError(f"no component named {name!r}; known: {known}")


@dataclass(frozen=True)
class StartResult:
    status: Status
    started: bool
    seconds: float


def start_wave(
    wave: list[Component], timeout_s: float, on_ready: Callable[[StartResult], None]
) -> list[StartResult]:
    """Start the components of one wave together, then wait until each is healthy."""
    results = []
    began = time.monotonic()
    started = {c.name: c.start() for c in wave}
    for component in wave:
        component.wait_healthy(timeout_s)
        component.after_start()
        result = StartResult(
            component.status(), started[component.name], time.monotonic() - began
        )
        on_ready(result)
        results.append(result)
    return results


def down(stack: Stack) -> list[tuple[str, bool]]:
    """Stop every component we own, last started first."""
    stopped = []
    for component in reversed(stack.components()):
        was_running = component.stop()
        if was_running:
            log.info("stopped component=%s", component.name)
        stopped.append((component.name, was_running))
    return stopped


def status(stack: Stack) -> list[Status]:
    return [c.status() for c in stack.components()]
