"""ClickHouse: our chDB process behind the HTTP interface, or an existing server."""

from __future__ import annotations

import logging
import sys
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from services import process
from services.component import Component
from services.config import REPO_ROOT
from services.health import Probe, first_line

log = logging.getLogger(__name__)


class ClickHouseServer(Component):
    name = "clickhouse"
    port_setting = "REVETL_CLICKHOUSE_PORT"

    @property
    def external(self) -> bool:
        return self.settings.clickhouse_url is not None

    @property
    def port(self) -> int:
        return self.settings.clickhouse_port

    @property
    def url(self) -> str:
        if self.settings.clickhouse_url is not None:
            return self.settings.clickhouse_url.rstrip("/")
        return f"http://{self.settings.bind_host}:{self.settings.clickhouse_port}"

    @property
    def address(self) -> str:
        return self.url

    def spec(self) -> process.ProcessSpec:
        s = self.settings
        data_dir = s.path("clickhouse", "data")
        argv = [
            sys.executable,
            "-m", "services.clickhouse_server",
            "--data-dir", str(data_dir),
            "--host", s.bind_host,
            "--port", str(s.clickhouse_port),
        ]  # fmt: skip
        return process.ProcessSpec(
            name=self.name,
            argv=argv,
            pid_file=s.path("run", "clickhouse.pid"),
            log_file=s.path("logs", "clickhouse.log"),
            marker=str(data_dir),
            cwd=REPO_ROOT,
        )

    def client(self, **kwargs: Any) -> Client:
        """A clickhouse-connect client: the one way project code talks to ClickHouse."""
        return clickhouse_connect.get_client(dsn=self.url, **kwargs)

    def probe(self) -> Probe:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "localhost", parts.port or 8123
        if not process.tcp_open(host, port):
            return Probe(ok=False, detail=f"nothing listens on {host}:{port}")
        try:
            client = self.client(connect_timeout=2, send_receive_timeout=5)
            version = str(client.server_version)
            client.close()
        except Exception as exc:  # clickhouse-connect raises several kinds
            return Probe(ok=False, detail=first_line(exc))
        return Probe(ok=True, version=version)
