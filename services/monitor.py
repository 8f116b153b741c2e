"""The monitor as a stack component, run as `python -m services.monitor_server`."""

from __future__ import annotations

import sys
import time
from importlib.metadata import version
from typing import Any

from services import process
from services.component import Component
from services.config import REPO_ROOT
from services.health import Probe, first_line
from services.local_http import get_json

PROBE_TIMEOUT_S = 2.0


class Monitor(Component):
    """Healthy when its HTTP server answers /healthz."""

    name = "monitor"
    port_setting = "REVETL_MONITOR_PORT"

    @property
    def port(self) -> int:
        return self.settings.monitor_port

    @property
    def url(self) -> str:
        return f"http://{self.settings.bind_host}:{self.settings.monitor_port}"

    @property
    def address(self) -> str:
        return self.url

    def spec(self) -> process.ProcessSpec:
        state_dir = str(self.settings.path())
        module = "services.monitor_server"
        return process.ProcessSpec(
            name=self.name,
            argv=[sys.executable, "-m", module, "--state-dir", state_dir],
            pid_file=self.settings.path("run", "monitor.pid"),
            log_file=self.settings.path("logs", "monitor.log"),
            marker=f"{module} --state-dir {state_dir}",
            cwd=REPO_ROOT,
            env={"REVETL_STATE_DIR": state_dir},
        )

    def get_json(self, path: str, timeout_s: float = PROBE_TIMEOUT_S) -> Any:
        """GET one of the monitor's JSON endpoints; raises OSError or ValueError."""
        return get_json(self.url + path, timeout_s)

    def probe(self) -> Probe:
        try:
            health = self.get_json("/healthz")
        except (OSError, ValueError) as exc:
            return Probe(ok=False, detail=first_line(exc))
        age = max(0.0, time.time() - float(health["time"]))
        detail = f"collected {age:.0f} s ago, {health['errors']} source error(s)"
        client = f"prometheus-client {version('prometheus-client')}"
        return Probe(ok=True, version=client, detail=detail)
