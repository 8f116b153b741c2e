"""What one component's state is, from its pid file and its health probe."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class State(StrEnum):
    HEALTHY = "healthy"
    STARTING = "starting"
    """The process runs but does not answer yet (or no longer answers)."""
    STOPPED = "stopped"
    DEAD = "dead"
    """A pid file is left but its process is gone: it crashed or was killed."""
    EXTERNAL = "external"
    """Not ours: set by a REVETL_*_URL setting and answering."""
    UNREACHABLE = "unreachable"
    """Not ours and not answering."""


@dataclass(frozen=True)
class Probe:
    """The answer of one health probe."""

    ok: bool
    version: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Status:
    """One row of `revetl status`."""

    name: str
    state: State
    pid: int | None
    address: str
    version: str | None
    detail: str

    @property
    def running(self) -> bool:
        return self.pid is not None or self.state in (State.EXTERNAL,)

    @property
    def healthy(self) -> bool:
        return self.state in (State.HEALTHY, State.EXTERNAL)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["running"] = self.running
        data["healthy"] = self.healthy
        return data


def classify(
    *, external: bool, pid: int | None, had_pid_file: bool, probe: Probe | None
) -> State:
    """Combine what the pid file says with what the probe says."""
    answered = probe is not None and probe.ok
    if external:
        return State.EXTERNAL if answered else State.UNREACHABLE
    if pid is None:
        return State.DEAD if had_pid_file else State.STOPPED
    return State.HEALTHY if answered else State.STARTING


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A one-line reason for a failed probe, never empty."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]
