"""The common shape of a server component: prepare, start, probe, stop."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

from services import process
from services.config import Settings
from services.errors import RetriableError
from services.health import Probe, State, Status, classify

log = logging.getLogger(__name__)


class StartTimeout(RetriableError):
    """A component did not become healthy in time."""

    def __init__(
        self, name: str, waited_s: float, log_tail: list[str], exited: bool
    ) -> None:
        self.name = name
        self.log_tail = log_tail
        what = (
            f"exited while starting (after {waited_s:.1f} s)"
            if exited
            else f"did not become healthy within {waited_s:.0f} s"
        )
        super().__init__(
            f"{name} {what}; its last log lines follow (all of them: "
            f"`revetl logs {name}`)"
        )


class Component(ABC):
    """One server of the stack. Subclasses say how to run and how to probe it."""

    name: str
    port_setting: str
    """The REVETL_* setting that moves it to another port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def external(self) -> bool:
        """True when a REVETL_*_URL setting points at a server we do not own."""
        return False

    @property
    @abstractmethod
    def address(self) -> str: ...

    @property
    def port(self) -> int | None:
        """The port we listen on when we start it ourselves."""
        return None

    @abstractmethod
    def spec(self) -> process.ProcessSpec: ...

    @abstractmethod
    def probe(self) -> Probe:
        """Ask the server whether it serves; never raises for a server that is down."""

    def prepare(self) -> None:  # noqa: B027 - most components need no preparation
        """One-time work before the first start: data dirs, config files."""

    def after_start(self) -> None:  # noqa: B027 - most need nothing once healthy
        """Work once healthy: databases, topics. Must be idempotent."""

    def status(self) -> Status:
        if self.external:
            answer = self.probe()
            state = classify(external=True, pid=None, had_pid_file=False, probe=answer)
            return Status(
                self.name, state, None, self.address, answer.version, answer.detail
            )
        spec = self.spec()
        pid = process.live_pid(spec)
        probe = self.probe() if pid is not None else None
        state = classify(
            external=False,
            pid=pid,
            had_pid_file=spec.pid_file.exists(),
            probe=probe,
        )
        version = probe.version if probe else None
        detail = probe.detail if probe else ""
        if state is State.DEAD:
            detail = "pid file left but process gone; `revetl up` restarts it"
        return Status(self.name, state, pid, self.address, version, detail)

    def start(self) -> bool:
        """Start it unless it already runs. True if a process was started."""
        if self.external:
            return False
        spec = self.spec()
        if process.live_pid(spec) is not None:
            return False
        if self.port is not None:
            process.ensure_port_free(
                self.settings.bind_host, self.port, self.port_setting
            )
        self.prepare()
        process.spawn(spec)
        log.info("started component=%s address=%s", self.name, self.address)
        return True

    def wait_healthy(self, timeout_s: float) -> Probe:
        began = time.monotonic()
        spec = None if self.external else self.spec()
        exited = False
        while time.monotonic() - began < timeout_s:
            probe = self.probe()
            if probe.ok:
                return probe
            if spec is not None and process.has_exited(spec):
                exited = True  # waiting longer cannot help
                break
            time.sleep(0.25)
        log_tail = [] if spec is None else process.tail(spec.log_file, 20)
        raise StartTimeout(self.name, time.monotonic() - began, log_tail, exited)

    def stop(self) -> bool:
        if self.external:
            return False
        return process.stop(self.spec(), self.settings.stop_timeout_s)
