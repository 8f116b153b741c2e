"""The LTV relay as a stack component, run as `python -m services.relay_server`."""

from __future__ import annotations

import sys
from importlib.metadata import version

from services import process
from services.component import Component
from services.config import REPO_ROOT
from services.health import Probe, first_line
from services.local_http import get_json

PROBE_TIMEOUT_S = 2.0


class LtvRelay(Component):
    """Healthy when it answers /healthz; the detail counts what it relayed."""

    name = "relay"
    port_setting = "REVETL_RELAY_PORT"

    @property
    def port(self) -> int:
        return self.settings.relay_port

    @property
    def url(self) -> str:
        return f"http://{self.settings.bind_host}:{self.settings.relay_port}"

    @property
    def ltv_url(self) -> str:
        """Where ClickHouse POSTs the LTV changes."""
        return self.url + "/ltv"

    @property
    def address(self) -> str:
        return self.url

    def spec(self) -> process.ProcessSpec:
        state_dir = str(self.settings.path())
        module = "services.relay_server"
        return process.ProcessSpec(
            name=self.name,
            argv=[sys.executable, "-m", module, "--state-dir", state_dir],
            pid_file=self.settings.path("run", "relay.pid"),
            log_file=self.settings.path("logs", "relay.log"),
            marker=f"{module} --state-dir {state_dir}",
            cwd=REPO_ROOT,
            env={"REVETL_STATE_DIR": state_dir},
        )

    def probe(self) -> Probe:
        try:
            health = get_json(self.url + "/healthz", PROBE_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            return Probe(ok=False, detail=first_line(exc))
        detail = (
            f"topic={health['topic']} messages={health['messages']} "
            f"failures={health['failures']}"
        )
        client = f"confluent-kafka {version('confluent-kafka')}"
        return Probe(ok=True, version=client, detail=detail)
