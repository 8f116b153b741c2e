"""infra/grafana/revetl.json: valid, importable anywhere, reads only real metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from monitor_contract import METRICS, metric_names, unknown_names

DASHBOARD = Path(__file__).resolve().parents[3] / "infra" / "grafana" / "revetl.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
REQUIRED = {
    "revetl_consumer_lag_messages",
    "revetl_replication_slot_lag_bytes",
    "revetl_freshness_seconds",
    "revetl_end_to_end_latency_seconds",
    "revetl_worker_events_total",
    "revetl_worker_upserts_total",
    "revetl_worker_rank_changes_total",
    "revetl_dead_letters",
    "revetl_connector_up",
    "revetl_clickhouse_consumer_last_poll_age_seconds",
    "revetl_component_up",
}
"""What the dashboard must show: lag per stage, freshness, latency, throughput,
dead letters, connector, ClickHouse consumers, components."""


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard."""
    return [
        (p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])
    ]


def for_prometheus(expr: str) -> str:
    """The expression with Grafana's variables replaced, as Prometheus gets it."""
    return expr.replace("$__rate_interval", "1m")


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]

    assert len(ids) == len(set(ids)), sorted(ids)
    assert len(ids) >= 10


def test_it_imports_with_any_prometheus_datasource(dashboard: dict[str, Any]) -> None:
    inputs = [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]]

    assert inputs == [("DS_PROMETHEUS", "datasource", "prometheus")]
    assert dashboard["id"] is None
    assert 36 <= dashboard["schemaVersion"] <= 41
    queried = [p for p in panels(dashboard) if p.get("targets")]
    assert all(p["datasource"] == DATASOURCE for p in queried)
    assert all(t["datasource"] == DATASOURCE for p in queried for t in p["targets"])


def test_every_query_reads_only_monitor_metrics(dashboard: dict[str, Any]) -> None:
    exprs = expressions(dashboard)
    unknown = {(title, e): unknown_names(e) for title, e in exprs if unknown_names(e)}

    assert exprs
    assert unknown == {}


def test_the_required_views_are_there(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(e) for _, e in expressions(dashboard)))

    assert REQUIRED - used == set()
    assert used <= METRICS | {"up"}
    text = json.dumps(dashboard)
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in text


def test_every_grid_position_fits_the_24_columns(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        assert pos["h"] > 0, panel["title"]


def test_metric_names_finds_names_and_skips_functions_and_labels() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(revetl_end_to_end_latency_"
        'seconds_bucket{job="x"}[5m]))) > bool 1e3 or on (group) up offset 5m'
    )

    assert metric_names(expr) == {"revetl_end_to_end_latency_seconds", "up"}
    assert unknown_names("rate(revetl_no_such_total[1m])") == {"revetl_no_such_total"}


def test_every_query_is_valid_promql(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    """promtool parses each query as a recording rule (JSON is valid YAML)."""
    rules = [
        {"record": f"revetl:dashboard_query_{i}", "expr": for_prometheus(expr)}
        for i, (_, expr) in enumerate(expressions(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
