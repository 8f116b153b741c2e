"""The stream worker as a stack component: `python -m stream_app` in the background."""

from __future__ import annotations

import logging
import sys
from importlib.metadata import version

from services import process
from services.component import Component
from services.config import REPO_ROOT
from services.health import Probe, first_line
from services.kafka import KafkaBroker, admin_client

log = logging.getLogger(__name__)


class StreamWorker(Component):
    """Healthy when its process runs and it is a member of its consumer group."""

    name = "worker"
    port_setting = ""

    @property
    def address(self) -> str:
        return f"group {self.settings.worker_group}"

    def spec(self) -> process.ProcessSpec:
        state_dir = str(self.settings.path())
        return process.ProcessSpec(
            name=self.name,
            argv=[sys.executable, "-m", "stream_app", "--state-dir", state_dir],
            pid_file=self.settings.path("run", "worker.pid"),
            log_file=self.settings.path("logs", "worker.log"),
            marker=f"--state-dir {state_dir}",
            cwd=REPO_ROOT,
            env={"REVETL_STATE_DIR": state_dir},
        )

    def probe(self) -> Probe:
        bootstrap = KafkaBroker(self.settings).bootstrap
        name = self.settings.worker_group
        try:
            admin = admin_client(bootstrap)  # must outlive the future it returns
            group = admin.describe_consumer_groups([name])[name].result(timeout=5)
        except Exception as exc:  # the client raises KafkaException and others
            return Probe(ok=False, detail=first_line(exc))
        members = len(group.members)
        state = str(group.state).rsplit(".", 1)[-1].lower()
        detail = f"group={name} state={state} members={members}"
        faust = f"faust-streaming {version('faust-streaming')}"
        return Probe(ok=members > 0, version=faust, detail=detail)
