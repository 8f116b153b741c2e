"""Settings of the stack: ports, paths and the addresses of servers we do not start."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ConfigurationError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra"
ENV_PREFIX = "REVETL_"
URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")
"""The password part of a `scheme://user:password@host` URL in a plain setting."""


class Settings(BaseSettings):
    """Every knob of the stack, read once from `REVETL_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore"
    )

    state_dir: Path = Field(
        default=Path(".revetl"),
        description="Data directories, pid files, logs and jars. Relative paths are "
        "taken from the current directory. Must be reachable by the `postgres` "
        "user when revetl runs as root.",
    )
    bind_host: str = Field(
        default="127.0.0.1",
        description="Address every server we start listens on. Anything other than "
        "loopback exposes unauthenticated Kafka and ClickHouse to the network.",
    )

    pg_bin_dir: Path = Field(
        default=Path("/usr/lib/postgresql/15/bin"),
        description="Where initdb and postgres live (Debian package postgresql-15).",
    )
    pg_user: str = Field(default="postgres", description="Superuser of both clusters.")
    pg_password: SecretStr = Field(
        default=SecretStr("postgres"),
        description="Password of pg_user on both clusters we start.",
    )
    source_pg_port: int = Field(default=5433, ge=1, le=65535)
    source_pg_database: str = Field(default="oltp")
    source_pg_url: SecretStr | None = Field(
        default=None,
        description="libpq URL of an existing source Postgres; when set, `revetl up` "
        "does not start one. It must run with wal_level=logical.",
    )
    target_pg_port: int = Field(default=5434, ge=1, le=65535)
    target_pg_database: str = Field(default="ltv")
    target_pg_url: SecretStr | None = Field(
        default=None,
        description="libpq URL of an existing product database; when set, `revetl "
        "up` does not start one.",
    )

    java: str = Field(default="java", description="Java 17+ executable.")
    mvn: str = Field(default="mvn", description="Maven executable, used by setup.")
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_heap_mb: int = Field(
        default=512,
        ge=128,
        description="Broker heap in MiB. 512 holds the demo load; raise it for "
        "sustained thousands of messages per second.",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port list of an existing Kafka; when set, `revetl up` "
        "starts no broker.",
    )
    connect_port: int = Field(default=8083, ge=1, le=65535)
    connect_heap_mb: int = Field(default=768, ge=128, description="Connect heap, MiB.")
    connect_url: str | None = Field(
        default=None,
        description="REST URL of an existing Kafka Connect with the Debezium "
        "Postgres plugin; when set, `revetl up` starts no Connect worker.",
    )
    clickhouse_port: int = Field(default=8123, ge=1, le=65535)
    clickhouse_url: str | None = Field(
        default=None,
        description="HTTP URL of an existing ClickHouse server; when set, `revetl "
        "up` starts no chDB front.",
    )

    clickhouse_flush_interval_ms: int = Field(
        default=50,
        ge=1,
        le=600_000,
        description="Longest wait, in ms, before ClickHouse's Kafka tables process a "
        "partial block. Lower means fresher ranks and more, smaller blocks at low "
        "rates (each block recomputes its users' LTV, ~0.17 s for one event); "
        "under load a block takes whatever waits, so this matters little there. "
        "ClickHouse's own default is 7,500. `revetl up` recreates revetl.cdc_kafka "
        "when it changes.",
    )
    clickhouse_consumer_group: str = Field(
        default="revetl-clickhouse",
        description="Consumer group of ClickHouse's Kafka table on the Debezium "
        "topics. Renaming it makes ClickHouse read the topics again from the start.",
    )

    ltv_topic: str = Field(
        default="revetl.ltv",
        min_length=1,
        description="Kafka topic ClickHouse writes one message per touched user to.",
    )
    relay_port: int = Field(
        default=8124,
        ge=1,
        le=65535,
        description="Port on bind_host of the LTV relay, which ClickHouse POSTs "
        "every block of LTV changes to and which produces them to ltv_topic. A "
        "ClickHouse server elsewhere (REVETL_CLICKHOUSE_URL) must be able to reach "
        "it there.",
    )
    relay_delivery_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds the relay waits for Kafka to acknowledge a block "
        "before it answers ClickHouse with an error; ClickHouse then reads the "
        "block again. Longer rides out a slow broker, shorter reports it sooner.",
    )
    worker_group: str = Field(
        default="revetl-worker",
        min_length=1,
        description="Kafka consumer group of the worker. Renaming it starts from the "
        "earliest retained offset again (harmless: old versions are ignored).",
    )
    monitor_port: int = Field(
        default=9108,
        ge=1,
        le=65535,
        description="Port of the monitor on bind_host: /metrics for Prometheus, "
        "/api/state and the live page.",
    )
    worker_metrics_port: int = Field(
        default=9109,
        ge=0,
        le=65535,
        description="Port on bind_host where the stream worker serves its own "
        "Prometheus metrics (counters, end-to-end latency), which the monitor "
        "re-exposes. 0 turns them off; the monitor then reports the worker as down.",
    )
    monitor_interval_s: float = Field(
        default=2.0,
        ge=0.1,
        le=600.0,
        description="Seconds between two collections of the monitor. Every "
        "collection asks Kafka, Connect, both Postgres clusters, ClickHouse and "
        "the worker once: shorter shows changes sooner and costs more queries.",
    )
    start_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long `revetl up` waits for one component to become "
        "healthy before it gives up and prints that component's log.",
    )
    stop_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long `revetl down` waits after the polite signal before "
        "it kills a component.",
    )

    def path(self, *parts: str) -> Path:
        """A path inside the state directory, made absolute."""
        return self.state_dir.resolve().joinpath(*parts)

    def log_summary(self) -> str:
        """The effective settings as `key=value` pairs, secrets hidden."""
        pairs = []
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else ""
            elif isinstance(value, str):
                value = URL_PASSWORD.sub(r"\1***@", value)
            pairs.append(f"{name}={value}")
        return " ".join(pairs)


S = TypeVar("S", bound=Settings)


@overload
def load_settings(**overrides: Any) -> Settings: ...


@overload
def load_settings(cls: type[S], **overrides: Any) -> S: ...


def load_settings(cls: type[Settings] = Settings, **overrides: Any) -> Settings:
    """Read the settings, turning validation errors into one readable error."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            env = ENV_PREFIX + field.upper()
            problems.append(f"{env}: {err['msg']} (got {err.get('input')!r})")
        message = "invalid settings:\n  " + "\n  ".join(problems)
        raise ConfigurationError(message) from exc
