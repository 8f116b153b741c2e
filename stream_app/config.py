"""Settings of the stream worker process: the stack's settings plus its own knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from services.config import Settings, load_settings
from services.errors import ConfigurationError
from stream_app.ranks import DEFAULT_RULES_PATH
from stream_app.target import SCHEMA_NAME


class WorkerSettings(Settings):
    """Every knob of `revetl worker`, read once from `REVETL_*` environment variables.

    Shared values (Kafka and target Postgres addresses, credentials, bind host) keep
    the names of the stack's settings, so one environment configures both.
    """

    target_schema: str = Field(
        default="public",
        description="Postgres schema of the rank tables in the target database. "
        "Tests use their own; the product reads `public`.",
    )
    rank_rules_path: Path = Field(
        default=DEFAULT_RULES_PATH,
        description="TOML file with the rank classes, thresholds and discounts; the "
        "worker, the ClickHouse SQL and the batch code all read it.",
    )
    stat_date_timezone: str = Field(
        default="Europe/Moscow",
        description="Time zone whose calendar day of the source commit becomes "
        "`stat_date` (the original daily system ran on Moscow days).",
    )
    worker_batch_size: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most events written in one target transaction. Larger batches "
        "cost fewer round trips but hold row locks longer.",
    )
    worker_batch_window_ms: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="How long, in ms, the worker waits for a batch to fill before "
        "it writes what it has. Adds up to this much latency per event; shorter "
        "means more, smaller transactions.",
    )
    worker_retry_initial_s: float = Field(
        default=0.2,
        gt=0,
        description="First wait, in seconds, after a failed target write; each "
        "next wait doubles up to worker_retry_max_s.",
    )
    worker_retry_max_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait, in seconds, between target write attempts. "
        "Longer spares a struggling database; shorter recovers sooner.",
    )
    worker_lock_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long, in seconds, a batch waits for the target's writer "
        "lock (held by another writer, e.g. a backfill) before it retries and "
        "logs a WARNING.",
    )
    worker_statement_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest a target statement may run, in seconds, before it is "
        "cancelled and retried.",
    )
    worker_commit_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often, in seconds, offsets of events already written to "
        "the target are committed to Kafka. Longer means fewer commits but more "
        "events replayed (harmlessly) after a crash.",
    )
    worker_stream_buffer: int = Field(
        default=4096,
        ge=1,
        description="Events faust fetches ahead per partition before it pauses "
        "fetching. Larger smooths bursts and costs memory.",
    )
    worker_summary_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between the INFO summary lines (events, upserts, rank "
        "changes, dead letters).",
    )
    worker_web_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of faust's web server (health, stats) on bind_host; "
        "unset keeps it off.",
    )

    @field_validator("target_schema")
    @classmethod
    def _schema_is_plain(cls, value: str) -> str:
        if not SCHEMA_NAME.fullmatch(value):
            message = "must be a lower-case Postgres identifier: [a-z_][a-z0-9_]*"
            raise ValueError(message)
        return value

    @field_validator("stat_date_timezone")
    @classmethod
    def _timezone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone: {exc}") from exc
        return value

    @property
    def stat_date_tz(self) -> ZoneInfo:
        return ZoneInfo(self.stat_date_timezone)


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Read the worker settings, turning validation errors into one readable error."""
    settings = load_settings(WorkerSettings, **overrides)
    if settings.worker_retry_max_s < settings.worker_retry_initial_s:
        message = (
            f"REVETL_WORKER_RETRY_MAX_S ({settings.worker_retry_max_s}) is below "
            f"REVETL_WORKER_RETRY_INITIAL_S ({settings.worker_retry_initial_s}); "
            "raise the first or lower the second"
        )
        raise ConfigurationError(message)
    return settings
