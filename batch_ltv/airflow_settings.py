"""What a revetl Airflow task needs: Settings from Airflow connections, checked params.

Airflow itself is imported only by `airflow_connection`, at task run time, so the
mapping and the parameter checks here import and test without Airflow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from batch_ltv.backfill import HISTORY, TARGET, DayRange
from batch_ltv.seed import SeedPlan
from services.config import Settings, load_settings
from services.errors import ConfigurationError, RevetlError

log = logging.getLogger(__name__)

SOURCE_CONN_ID = "revetl_source"
TARGET_CONN_ID = "revetl_target"
CLICKHOUSE_CONN_ID = "revetl_clickhouse"
CONN_IDS = (SOURCE_CONN_ID, TARGET_CONN_ID, CLICKHOUSE_CONN_ID)

MANUAL_DAG: dict[str, Any] = {
    "schedule": None,
    "catchup": False,
    "max_active_runs": 1,
    "tags": ["revetl"],
    "default_args": {"retries": 0},
}
"""What both DAGs share: triggered by hand, one run at a time, never retried (a
seed or backfill run again after a failure is the user's call)."""

POSTGRES_TYPES = ("postgres", "postgresql")
HTTP_TYPES = ("http", "https")
LIBPQ_EXTRAS = frozenset(
    {
        "application_name",
        "channel_binding",
        "connect_timeout",
        "gssencmode",
        "options",
        "sslcert",
        "sslkey",
        "sslmode",
        "sslrootcert",
        "target_session_attrs",
    }
)
"""Extras of a Postgres connection passed on to libpq; others (Airflow hook
options such as `cursor`) are ignored with a warning."""

BOTH = "both"
WHICH = (HISTORY, TARGET, BOTH)
HISTORY_DAYS = 30
"""Days a history backfill covers when the run names neither `from` nor `to`."""

SEED_DEFAULTS: dict[str, Any] = {
    "users": 10_000,
    "max_sales_per_user": 1_000,
    "seed": 42,
    "until": "2025-10-13",
}
"""The defaults of `batch_ltv.seed_io.seed`, as the DAG's params show them."""

SEED_EXAMPLE = {"users": 1000, "max_sales_per_user": 1000, "seed": 42}
BACKFILL_EXAMPLE = {"which": "history", "from": "2025-09-01", "to": "2025-09-30"}

Lookup = Callable[[str], "ConnectionInfo | None"]


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow connection that revetl reads."""

    conn_id: str
    conn_type: str
    host: str
    port: int | None = None
    login: str = ""
    password: str = field(default="", repr=False)
    schema: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)


def postgres_url(info: ConnectionInfo, default_database: str) -> str:
    """A libpq URL from a `postgres` connection; `schema` is the database."""
    _check_type(info, POSTGRES_TYPES)
    options = {k: str(v) for k, v in info.extra.items() if k in LIBPQ_EXTRAS}
    ignored = sorted(set(info.extra) - LIBPQ_EXTRAS)
    if ignored:
        log.warning(
            "connection %s: extras %s are not libpq options, ignored",
            info.conn_id,
            ",".join(ignored),
        )
    netloc = _netloc(info, 5432)
    path = "/" + quote(info.schema or default_database, safe="")
    return urlunsplit(
        ("postgresql", netloc, path, urlencode(sorted(options.items())), "")
    )


def clickhouse_url(info: ConnectionInfo) -> str:
    """The HTTP URL of ClickHouse from an `http`/`https` connection.

    An HTTP connection keeps its scheme in `schema`, as Airflow's HTTP hook reads it.
    """
    _check_type(info, HTTP_TYPES)
    scheme = info.schema if info.schema in HTTP_TYPES else info.conn_type
    default_port = 8443 if scheme == "https" else 8123
    return urlunsplit((scheme, _netloc(info, default_port), "", "", ""))


def _check_type(info: ConnectionInfo, expected: tuple[str, ...]) -> None:
    problems = []
    if info.conn_type not in expected:
        problems.append(f"type {info.conn_type!r} is not one of {', '.join(expected)}")
    if not info.host:
        problems.append("it has no host")
    if problems:
        message = (
            f"Airflow connection {info.conn_id}: {'; '.join(problems)}. Fix it with "
            f"`airflow connections delete {info.conn_id}` and `airflow connections "
            f"add {info.conn_id} --conn-uri ...`, or delete it to use the REVETL_* "
            "environment"
        )
        raise ConfigurationError(message)


def _netloc(info: ConnectionInfo, default_port: int) -> str:
    userinfo = ""
    if info.login:
        userinfo = quote(info.login, safe="")
        if info.password:
            userinfo += ":" + quote(info.password, safe="")
        userinfo += "@"
    host = f"[{info.host}]" if ":" in info.host else info.host
    return f"{userinfo}{host}:{info.port or default_port}"


def settings_overrides(
    connections: Mapping[str, ConnectionInfo], base: Settings
) -> dict[str, object]:
    """Settings fields that the connections present replace; the rest stays."""
    overrides: dict[str, object] = {}
    if SOURCE_CONN_ID in connections:
        url = postgres_url(connections[SOURCE_CONN_ID], base.source_pg_database)
        overrides["source_pg_url"] = url
    if TARGET_CONN_ID in connections:
        url = postgres_url(connections[TARGET_CONN_ID], base.target_pg_database)
        overrides["target_pg_url"] = url
    if CLICKHOUSE_CONN_ID in connections:
        overrides["clickhouse_url"] = clickhouse_url(connections[CLICKHOUSE_CONN_ID])
    return overrides


def task_settings(lookup: Lookup | None = None) -> Settings:
    """The REVETL_* settings, with the servers of the revetl_* connections."""
    base = load_settings()
    find = lookup or airflow_connection
    found = {}
    for conn_id in CONN_IDS:
        info = find(conn_id)
        if info is not None:
            found[conn_id] = info
    overrides = settings_overrides(found, base)
    settings = load_settings(**overrides) if overrides else base
    log.info(
        "revetl settings connections=%s %s",
        ",".join(found) or "none",
        safe_summary(settings),
    )
    return settings


def safe_summary(settings: Settings) -> str:
    """Settings.log_summary() with any password in clickhouse_url hidden too."""
    summary = settings.log_summary()
    url = settings.clickhouse_url
    if url is None:
        return summary
    parts = urlsplit(url)
    if parts.password is None:
        return summary
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return summary.replace(url, urlunsplit(parts._replace(netloc=netloc)))


def airflow_connection(conn_id: str) -> ConnectionInfo | None:
    """The Airflow connection `conn_id`, or None when Airflow has none by that id."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=str(conn.conn_type or ""),
        host=str(conn.host or ""),
        port=None if conn.port is None else int(conn.port),
        login=str(conn.login or ""),
        password=str(conn.password or ""),
        schema=str(conn.schema or ""),
        extra=dict(conn.extra_dejson),
    )


def seed_plan(params: Mapping[str, Any]) -> SeedPlan:
    """The `revetl_seed` params as a plan, or one error listing every bad value."""
    problems: list[str] = []
    values = {**SEED_DEFAULTS, **params}
    users = _integer(values, "users", problems)
    max_sales = _integer(values, "max_sales_per_user", problems)
    seed = _integer(values, "seed", problems)
    until = _day(values, "until", problems)
    if problems or users is None or max_sales is None or seed is None or until is None:
        raise _params_error("revetl_seed", problems, SEED_EXAMPLE)
    try:
        return SeedPlan.checked(users, max_sales, seed, until)
    except ConfigurationError as exc:
        raise _params_error("revetl_seed", [str(exc)], SEED_EXAMPLE) from exc


@dataclass(frozen=True)
class BackfillPlan:
    """Which backfills one `revetl_backfill` run does, with their ranges."""

    which: str
    days: DayRange | None
    dry_run: bool

    @property
    def history(self) -> bool:
        return self.which in (HISTORY, BOTH)

    @property
    def target(self) -> bool:
        return self.which in (TARGET, BOTH)

    def as_conf(self) -> dict[str, object]:
        """The run's params, defaults resolved: triggering with them repeats it."""
        conf: dict[str, object] = {"which": self.which}
        if self.days is not None:
            conf["from"] = self.days.first.isoformat()
            conf["to"] = self.days.last.isoformat()
        if self.target:
            conf["dry_run"] = self.dry_run
        return conf


def backfill_plan(params: Mapping[str, Any], today: date) -> BackfillPlan:
    """The `revetl_backfill` params checked, or one error listing every bad value.

    Without `from` and `to` a history backfill covers the HISTORY_DAYS days up to
    and including `today`; a missing `to` is `today`, a missing `from` the day
    HISTORY_DAYS - 1 days before `to`.
    """
    problems: list[str] = []
    which = params.get("which", BOTH)
    if which not in WHICH:
        problems.append(f"which={which!r} must be one of {', '.join(WHICH)}")
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems.append(f"dry_run={dry_run!r} must be true or false")
    elif dry_run and which == HISTORY:
        problems.append(
            "dry_run=true applies to the target backfill only and a history backfill "
            "always writes: set which=target, or dry_run=false"
        )
    days = _history_days(params, today, problems) if which in (HISTORY, BOTH) else None
    if problems:
        raise _params_error("revetl_backfill", problems, BACKFILL_EXAMPLE)
    return BackfillPlan(str(which), days, bool(dry_run))


def _history_days(
    params: Mapping[str, Any], today: date, problems: list[str]
) -> DayRange | None:
    given = {k: params.get(k) for k in ("from", "to")}
    first = _day(given, "from", problems) if given["from"] is not None else None
    last = _day(given, "to", problems) if given["to"] is not None else None
    if problems:
        return None
    span = timedelta(days=HISTORY_DAYS - 1)
    if last is None:
        last = today
    if first is None:
        first = last - span
    try:
        return DayRange.checked(first, last, labels=("from=", "to="))
    except ValueError as exc:
        problems.append(str(exc))
        return None


def _integer(values: Mapping[str, Any], name: str, problems: list[str]) -> int | None:
    value = values.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    problems.append(f"{name}={value!r} must be a whole number")
    return None


def _day(values: Mapping[str, Any], name: str, problems: list[str]) -> date | None:
    value = values.get(name)
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    problems.append(f"{name}={value!r} must be a day as YYYY-MM-DD")
    return None


def trigger_command(dag_id: str, conf: Mapping[str, object]) -> str:
    """The CLI command that triggers `dag_id` with `conf`."""
    return f"airflow dags trigger {dag_id} --conf '{json.dumps(conf)}'"


def _params_error(
    dag_id: str, problems: list[str], example: Mapping[str, object]
) -> ConfigurationError:
    message = (
        f"bad {dag_id} params, nothing was done: {'; '.join(problems)}. Trigger it "
        f"again with corrected params, e.g. `{trigger_command(dag_id, example)}`"
    )
    return ConfigurationError(message)


def step_error(
    dag_id: str, step: str, exc: BaseException, conf: Mapping[str, object]
) -> RevetlError:
    """The error a failed task raises: the step, the cause, the command to retry.

    It keeps the cause's class when it is one of ours (what to do about it).
    """
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    message = (
        f"{dag_id} step {step} failed: {type(exc).__name__}: {cause}. Check the stack "
        f"with `revetl status` (and the task log), then run it again with "
        f"`{trigger_command(dag_id, conf)}`"
    )
    kind = type(exc) if isinstance(exc, RevetlError) else RevetlError
    return kind(message)


class ProgressLog:
    """An `on_progress(done, total)` callback that logs about every tenth."""

    def __init__(self, step: str, steps: int = 10) -> None:
        self.step = step
        self.steps = steps
        self.logged = -1

    def __call__(self, done: int, total: int) -> None:
        tenth = self.steps if total <= 0 else done * self.steps // total
        if tenth > self.logged:
            self.logged = tenth
            log.info("%s progress done=%d total=%d", self.step, done, total)
