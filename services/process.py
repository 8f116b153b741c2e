"""Start, find and stop the server processes we own, through pid files."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.errors import ConfigurationError, FatalError

log = logging.getLogger(__name__)

_children: dict[int, subprocess.Popen[bytes]] = {}
"""Servers this process started. Kept so that they are reaped here, not warned
about as 'still running' when a Popen object is garbage-collected."""


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one long-lived server process."""

    name: str
    argv: Sequence[str]
    pid_file: Path
    log_file: Path
    marker: str
    """A string that must appear in the process's command line; it tells our
    process apart from an unrelated one that reused a stale pid."""
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM


def running_as_root() -> bool:
    return os.geteuid() == 0


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def command_line(pid: int) -> str | None:
    """The command line of a live process, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None  # a zombie: it has exited and waits to be reaped
    return raw.replace(b"\0", b" ").decode(errors="replace")


def live_pid(spec: ProcessSpec) -> int | None:
    """The pid of our running process, or None (a stale pid file counts as none)."""
    pid = read_pid(spec.pid_file)
    if pid is None:
        return None
    cmdline = command_line(pid)
    if cmdline is None or spec.marker not in cmdline:
        return None
    return pid


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tcp_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts connections there: a cheap first health step."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def ensure_port_free(host: str, port: int, setting: str) -> None:
    if port_in_use(host, port):
        message = (
            f"port {port} on {host} is already in use by another program; stop it "
            f"or choose another port with {setting}=<port>"
        )
        raise ConfigurationError(message)


def _demote(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def chown_for(path: Path, user: str | None) -> None:
    """Give a directory we created to the user the server runs as."""
    if user is None:
        return
    uid, gid = _demote(user)
    os.chown(path, uid, gid)


def spawn(spec: ProcessSpec) -> int:
    """Start the process in its own session, detached, logging to its log file."""
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    spec.pid_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env}
    with open(spec.log_file, "ab") as log_out:
        proc = subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=subprocess.STDOUT,
            cwd=spec.cwd,
            env=env,
            start_new_session=True,
            user=spec.user,
            group=_demote(spec.user)[1] if spec.user else None,
        )
    _children[proc.pid] = proc
    spec.pid_file.write_text(f"{proc.pid}\n")
    log.debug("spawned name=%s pid=%d argv=%s", spec.name, proc.pid, spec.argv[0])
    return proc.pid


def has_exited(spec: ProcessSpec) -> bool:
    """True once the process of the pid file is gone for sure.

    Unlike `live_pid`, a momentarily unreadable command line (the JVM launcher
    re-executing itself, say) does not count as gone.
    """
    pid = read_pid(spec.pid_file)
    if pid is None:
        return True
    child = _children.get(pid)
    if child is not None:
        return child.poll() is not None
    return not Path(f"/proc/{pid}").exists()


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def wait_gone(pid: int, marker: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        cmdline = command_line(pid)
        if cmdline is None or marker not in cmdline:
            return True
        time.sleep(0.1)
    return False


def stop(spec: ProcessSpec, timeout_s: float) -> bool:
    """Stop our process: the polite signal, then SIGKILL. True if one was running."""
    pid = live_pid(spec)
    if pid is None:
        spec.pid_file.unlink(missing_ok=True)
        return False
    log.debug(
        "stopping name=%s pid=%d signal=%s", spec.name, pid, spec.stop_signal.name
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, spec.stop_signal)
    if not wait_gone(pid, spec.marker, timeout_s):
        log.warning(
            "name=%s pid=%d ignored %s; killing it",
            spec.name,
            pid,
            spec.stop_signal.name,
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if not wait_gone(pid, spec.marker, 10.0):
            raise FatalError(f"{spec.name} (pid {pid}) survived SIGKILL")
    _wait_child(pid, spec.name, timeout_s)
    spec.pid_file.unlink(missing_ok=True)
    return True


def _wait_child(pid: int, name: str, timeout_s: float) -> None:
    # A process's command line reads empty while it is still exiting (a chDB
    # server takes a moment), so wait_gone can return before it can be reaped.
    # Wait for a child of ours here, or it lingers until this process exits.
    child = _children.pop(pid, None)
    if child is None:
        return
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("name=%s pid=%d still exiting after %.0f s", name, pid, timeout_s)
        _children[pid] = child


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of a log file; empty when there is none yet."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return data.splitlines()[-lines:]


def run_checked(
    argv: Sequence[str],
    what: str,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a short command; on failure raise with its output so the user sees why."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        user=user,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        message = f"{what} failed (exit {result.returncode}):\n" + "\n".join(output)
        raise FatalError(message)
    return result.stdout
