"""A real Prometheus scrapes the running monitor with infra/prometheus/'s config."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from required_tools import required_tool

from services.config import Settings
from services.stack import Stack

T = TypeVar("T")
INFRA = Path(__file__).resolve().parents[3] / "infra"
PROMETHEUS_DIR = INFRA / "prometheus"
DASHBOARD = INFRA / "grafana" / "revetl.json"
DEFAULT_TARGET = "127.0.0.1:9108"
REQUIRE_ENV = "REVETL_REQUIRE_PROMTOOL"
WAIT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alert_names() -> set[str]:
    text = (PROMETHEUS_DIR / "rules.yml").read_text()
    return set(re.findall(r"^\s*- alert:\s*(\w+)", text, flags=re.MULTILINE))


class PrometheusApi:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            return json.load(exc)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def poll(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float) -> T:
    """Call read until done(value) or the timeout; return the last value."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(1.0)
        value = read()
    return value


@pytest.fixture(scope="module")
def prometheus(
    stack: Stack, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusApi]:
    """Prometheus on a free loopback port, with the repo's config pointed at the
    monitor's port and its own storage; stopped afterwards."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    binary = required_tool("prometheus", "prometheus", REQUIRE_ENV)
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert config.count(f'"{DEFAULT_TARGET}"') == 1
    monitor = f"{settings.bind_host}:{settings.monitor_port}"
    (tmp_path / "prometheus.yml").write_text(config.replace(DEFAULT_TARGET, monitor))
    shutil.copy(PROMETHEUS_DIR / "rules.yml", tmp_path / "rules.yml")
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = PrometheusApi(f"http://127.0.0.1:{port}")
    try:
        ready = poll(api.ready, bool, 60)
        assert ready, log_path.read_text(errors="replace")[-3000:]
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_prometheus_scrapes_the_monitor(
    prometheus: PrometheusApi, settings: Settings
) -> None:
    def targets() -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = prometheus.get("/api/v1/targets")["data"][
            "activeTargets"
        ]
        return active

    found = poll(targets, lambda t: bool(t) and t[0]["health"] == "up", WAIT_S)
    assert [(t["labels"]["job"], t["health"], t["lastError"]) for t in found] == [
        ("revetl-monitor", "up", "")
    ]
    assert found[0]["scrapeUrl"] == (
        f"http://{settings.bind_host}:{settings.monitor_port}/metrics"
    )

    lag = poll(lambda: prometheus.query("revetl_consumer_lag_messages"), bool, WAIT_S)
    groups = {series["metric"]["group"] for series in lag}
    assert {settings.clickhouse_consumer_group, settings.worker_group} <= groups
    freshness = poll(lambda: prometheus.query("revetl_freshness_seconds"), bool, WAIT_S)
    assert len(freshness) == 1
    assert float(freshness[0]["value"][1]) >= 0


def test_prometheus_loads_and_evaluates_the_alert_rules(
    prometheus: PrometheusApi,
) -> None:
    def rules() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules", type="alert")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def all_evaluated(found: list[dict[str, Any]]) -> bool:
        never = "0001-01-01"  # Go's zero time: not evaluated yet
        return bool(found) and not any(r["lastEvaluation"].startswith(never)
                                       for r in found)  # fmt: skip

    evaluated = poll(rules, all_evaluated, WAIT_S)

    assert {r["name"] for r in evaluated} == alert_names()
    unhealthy = [(r["name"], r["health"], r.get("lastError")) for r in evaluated
                 if r["health"] != "ok"]  # fmt: skip
    assert unhealthy == []
    for rule in evaluated:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["name"]
        assert "`revetl " in rule["annotations"]["description"], rule["name"]


def test_every_dashboard_query_runs_on_the_scraped_data(
    prometheus: PrometheusApi,
) -> None:
    poll(lambda: prometheus.query("revetl_freshness_seconds"), bool, WAIT_S)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"].replace("$__rate_interval", "1m")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]

    answers = {e: prometheus.get("/api/v1/query", query=e)["status"] for e in exprs}

    assert exprs
    assert {e: s for e, s in answers.items() if s != "success"} == {}
    for expr in (
        "revetl_consumer_lag_messages",
        "revetl_replication_slot_lag_bytes",
        "revetl_connector_up",
        "revetl_component_up",
        "revetl_clickhouse_consumer_last_poll_age_seconds",
    ):
        assert prometheus.query(expr), f"no series for {expr}"
