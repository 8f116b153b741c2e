"""The Kafka Connect worker that runs the Debezium Postgres connector."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from string import Template
from typing import Any

from services import jars, process
from services.component import Component
from services.config import INFRA_DIR
from services.errors import ConfigurationError, RetriableError
from services.health import Probe, first_line
from services.kafka import KafkaBroker, java_argv

log = logging.getLogger(__name__)

DEBEZIUM_POSTGRES = "io.debezium.connector.postgresql.PostgresConnector"


class ConnectWorker(Component):
    name = "connect"
    port_setting = "REVETL_CONNECT_PORT"

    @property
    def external(self) -> bool:
        return self.settings.connect_url is not None

    @property
    def port(self) -> int:
        return self.settings.connect_port

    @property
    def url(self) -> str:
        if self.settings.connect_url is not None:
            return self.settings.connect_url.rstrip("/")
        return f"http://{self.settings.bind_host}:{self.settings.connect_port}"

    @property
    def address(self) -> str:
        return self.url

    def _config_path(self) -> str:
        return str(self.settings.path("connect", "connect-distributed.properties"))

    def spec(self) -> process.ProcessSpec:
        s = self.settings
        classpath = str(jars.kafka_jars_dir(s) / "*")
        main = "org.apache.kafka.connect.cli.ConnectDistributed"
        argv = java_argv(s.java, s.connect_heap_mb, classpath, main)
        return process.ProcessSpec(
            name=self.name,
            argv=[*argv, self._config_path()],
            pid_file=s.path("run", "connect.pid"),
            log_file=s.path("logs", "connect.log"),
            marker=self._config_path(),
        )

    def prepare(self) -> None:
        s = self.settings
        if jars.missing_jars(s):
            message = "the Kafka Connect or Debezium jars are missing: run `make setup`"
            raise ConfigurationError(message)
        template = Template(
            (INFRA_DIR / "kafka" / "connect-distributed.properties").read_text()
        )
        rendered = template.substitute(
            bootstrap=KafkaBroker(s).bootstrap,
            host=s.bind_host,
            port=s.connect_port,
            plugin_path=jars.plugin_path(s),
        )
        config = s.path("connect", "connect-distributed.properties")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(rendered)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call Connect's REST API; raises RetriableError when it does not answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            message = f"Connect {method} {path} answered {exc.code}: {detail}"
            raise ConnectError(message, status=exc.code) from exc
        except OSError as exc:
            message = f"Connect at {self.url} does not answer ({exc})"
            raise RetriableError(message) from exc
        return json.loads(payload) if payload else None

    def probe(self) -> Probe:
        try:
            root = self.request("GET", "/")
            plugins = self.request("GET", "/connector-plugins")
        except (RetriableError, ConnectError) as exc:
            return Probe(ok=False, detail=first_line(exc))
        names = {p.get("class") for p in plugins}
        if DEBEZIUM_POSTGRES not in names:
            return Probe(
                ok=False,
                version=root.get("version"),
                detail="the Debezium Postgres plugin is not loaded",
            )
        debezium = next(
            p["version"] for p in plugins if p["class"] == DEBEZIUM_POSTGRES
        )
        return Probe(
            ok=True, version=root.get("version"), detail=f"debezium={debezium}"
        )


class ConnectError(RetriableError):
    """Connect answered with an HTTP error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
