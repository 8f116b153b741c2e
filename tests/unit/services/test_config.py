"""Settings: defaults, environment overrides and one error naming every bad one."""

from __future__ import annotations

import os

import pytest

from services.config import ENV_PREFIX, load_settings
from services.errors import ConfigurationError


@pytest.fixture
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults as a fresh shell sees them, whatever this shell exported."""
    for name in os.environ:
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_settings_env")
def test_defaults_bind_loopback_and_use_the_documented_ports() -> None:
    settings = load_settings()

    assert settings.bind_host == "127.0.0.1"
    assert (settings.source_pg_port, settings.target_pg_port) == (5433, 5434)
    assert (settings.kafka_port, settings.connect_port) == (9092, 8083)
    assert settings.clickhouse_port == 8123


def test_environment_overrides_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVETL_KAFKA_PORT", "19092")

    assert load_settings().kafka_port == 19092


def test_every_bad_setting_is_named_in_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REVETL_KAFKA_PORT", "not-a-port")
    monkeypatch.setenv("REVETL_SOURCE_PG_PORT", "70000")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "REVETL_KAFKA_PORT" in message
    assert "REVETL_SOURCE_PG_PORT" in message


def test_summary_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVETL_PG_PASSWORD", "s3cret-value")
    monkeypatch.setenv("REVETL_TARGET_PG_URL", "postgresql://u:hunter2@db/ltv")
    monkeypatch.setenv("REVETL_CLICKHOUSE_URL", "http://default:ch-pass@ch:8123/")

    summary = load_settings().log_summary()

    assert "s3cret-value" not in summary
    assert "hunter2" not in summary
    assert "ch-pass" not in summary
    assert "pg_password=***" in summary
    assert "clickhouse_url=http://default:***@ch:8123/" in summary


@pytest.mark.usefixtures("no_settings_env")
def test_monitor_defaults_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    monkeypatch.setenv("REVETL_WORKER_METRICS_PORT", "0")
    metrics_off = load_settings()
    monkeypatch.setenv("REVETL_MONITOR_INTERVAL_S", "0")

    with pytest.raises(ConfigurationError, match="REVETL_MONITOR_INTERVAL_S"):
        load_settings()
    assert (defaults.monitor_port, defaults.worker_metrics_port) == (9108, 9109)
    assert defaults.monitor_interval_s == 2.0
    assert metrics_off.worker_metrics_port == 0
