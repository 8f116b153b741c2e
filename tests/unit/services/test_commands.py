"""The command lines and config files the stack builds for each server."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from services import process
from services.config import load_settings
from services.errors import ConfigurationError
from services.jars import jar_version
from services.kafka import java_argv
from services.stack import Stack
from services.wiring import pipeline_params


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("REVETL_STATE_DIR", str(tmp_path / "state"))
    return Stack.from_settings(load_settings())


def test_java_command_sets_heap_and_log_config() -> None:
    argv = java_argv("java", 384, "/jars/*", "kafka.Kafka")

    assert argv[0] == "java"
    assert "-Xmx384m" in argv and "-Xms384m" in argv
    assert argv[-3:] == ["-cp", "/jars/*", "kafka.Kafka"]
    assert any(a.startswith("-Dlog4j2.configurationFile=") for a in argv)


def test_postgres_listens_on_loopback_only_and_stops_fast(stack: Stack) -> None:
    spec = stack.source_pg.spec()

    assert "listen_addresses=127.0.0.1" in spec.argv
    assert spec.argv[spec.argv.index("-p") + 1] == str(stack.settings.source_pg_port)
    assert spec.stop_signal is signal.SIGINT
    assert spec.marker in " ".join(spec.argv)


def test_every_component_has_its_own_pid_and_log_in_the_state_dir(
    stack: Stack, tmp_path: Path
) -> None:
    specs = [c.spec() for c in stack.components()]

    assert len({s.pid_file for s in specs}) == len(specs)
    assert len({s.log_file for s in specs}) == len(specs)
    for spec in specs:
        assert spec.pid_file.is_relative_to(tmp_path / "state")
        assert spec.marker in " ".join(spec.argv)


def test_clickhouse_posts_to_the_relay_which_starts_with_it(stack: Stack) -> None:
    storage = stack.waves()[0]
    host, port = stack.settings.bind_host, stack.settings.relay_port

    assert stack.clickhouse in storage and stack.relay in storage
    assert pipeline_params(stack).relay_url == f"http://{host}:{port}/ltv"
    assert stack.relay.spec().argv[1:3] == ["-m", "services.relay_server"]


def test_external_url_means_we_start_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVETL_CLICKHOUSE_URL", "http://ch.example:8123")
    monkeypatch.setenv("REVETL_SOURCE_PG_URL", "postgresql://u:p@db.example:6543/shop")
    stack = Stack.from_settings(load_settings())

    assert stack.clickhouse.external and stack.source_pg.external
    assert stack.clickhouse.start() is False
    assert stack.source_pg.address == "db.example:6543"
    assert not stack.kafka.external


def test_a_busy_port_is_refused_naming_the_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        with pytest.raises(ConfigurationError, match="REVETL_KAFKA_PORT") as caught:
            process.ensure_port_free("127.0.0.1", port, "REVETL_KAFKA_PORT")

    assert str(port) in str(caught.value)


def test_stale_pid_file_is_not_a_live_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("1\n")  # pid 1 exists but is not ours
    spec = process.ProcessSpec(
        name="x",
        argv=["x"],
        pid_file=pid_file,
        log_file=tmp_path / "x.log",
        marker=str(tmp_path),
    )

    assert process.live_pid(spec) is None


def test_jar_version_is_read_from_file_names(tmp_path: Path) -> None:
    for name in ("kafka-clients-4.3.1.jar", "kafka_2.13-4.3.1.jar"):
        (tmp_path / name).write_bytes(b"")

    assert jar_version(tmp_path, "kafka_2.13") == "4.3.1"
    assert jar_version(tmp_path, "kafka-clients") == "4.3.1"
    assert jar_version(tmp_path, "connect-api") is None
