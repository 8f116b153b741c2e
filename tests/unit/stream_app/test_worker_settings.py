"""Worker settings (stream_app/config.py): defaults, shared names, refused values."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.errors import ConfigurationError
from stream_app.app import faust_broker_url
from stream_app.config import load_worker_settings
from stream_app.ranks import DEFAULT_RULES_PATH


def test_defaults_match_the_contract() -> None:
    settings = load_worker_settings()

    assert settings.ltv_topic == "revetl.ltv"
    assert settings.worker_group == "revetl-worker"
    assert settings.target_schema == "public"
    assert settings.rank_rules_path == DEFAULT_RULES_PATH
    assert (settings.worker_batch_size, settings.worker_batch_window_ms) == (1000, 50)
    assert settings.worker_web_port is None


def test_shared_values_keep_the_stack_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVETL_KAFKA_PORT", "19092")
    monkeypatch.setenv("REVETL_TARGET_PG_PORT", "15434")
    monkeypatch.setenv("REVETL_RANK_RULES_PATH", "/etc/revetl/ranks.toml")

    settings = load_worker_settings()

    assert (settings.kafka_port, settings.target_pg_port) == (19092, 15434)
    assert settings.rank_rules_path == Path("/etc/revetl/ranks.toml")


def test_settings_are_frozen() -> None:
    settings = load_worker_settings()

    with pytest.raises(ValueError, match="frozen"):
        settings.worker_group = "other"  # type: ignore[misc]  # proving it refuses


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REVETL_TARGET_SCHEMA", "public; DROP TABLE x"),
        ("REVETL_TARGET_SCHEMA", "Mixed"),
        ("REVETL_STAT_DATE_TIMEZONE", "Mars/Olympus"),
        ("REVETL_WORKER_BATCH_SIZE", "0"),
        ("REVETL_WORKER_BATCH_WINDOW_MS", "0"),
        ("REVETL_WORKER_WEB_PORT", "70000"),
    ],
)
def test_bad_values_are_refused_by_their_variable_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError, match=name):
        load_worker_settings()


def test_a_cap_below_the_first_wait_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVETL_WORKER_RETRY_INITIAL_S", "5")
    monkeypatch.setenv("REVETL_WORKER_RETRY_MAX_S", "1")

    with pytest.raises(ConfigurationError, match="REVETL_WORKER_RETRY_MAX_S"):
        load_worker_settings()


def test_the_summary_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVETL_PG_PASSWORD", "s3cret-value")

    summary = load_worker_settings().log_summary()

    assert "s3cret-value" not in summary
    assert "ltv_topic=revetl.ltv" in summary
    assert "worker_group=revetl-worker" in summary


def test_the_broker_url_lists_every_bootstrap_host() -> None:
    assert faust_broker_url("127.0.0.1:9092") == "aiokafka://127.0.0.1:9092"
    assert faust_broker_url("a:1, b:2") == "aiokafka://a:1;aiokafka://b:2"
