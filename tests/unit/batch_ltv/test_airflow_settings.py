"""Airflow connections to Settings, and the checks of the DAGs' params (no Airflow)."""

from __future__ import annotations

import inspect
import json
import logging
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from batch_ltv.airflow_settings import (
    CLICKHOUSE_CONN_ID,
    HISTORY_DAYS,
    SEED_DEFAULTS,
    SOURCE_CONN_ID,
    TARGET_CONN_ID,
    BackfillPlan,
    ConnectionInfo,
    ProgressLog,
    backfill_plan,
    clickhouse_url,
    postgres_url,
    safe_summary,
    seed_plan,
    step_error,
    task_settings,
    trigger_command,
)
from batch_ltv.backfill import MAX_DAYS, DayRange
from batch_ltv.seed import SeedPlan
from batch_ltv.seed_io import seed
from services.clickhouse import ClickHouseServer
from services.config import load_settings
from services.errors import ConfigurationError, RetriableError, RevetlError
from services.postgres import PostgresCluster

TODAY = date(2026, 3, 15)
PASSWORD = "p@ss:w/rd%"


def pg(conn_id: str = SOURCE_CONN_ID, **fields: Any) -> ConnectionInfo:
    values: dict[str, Any] = {
        "conn_type": "postgres",
        "host": "db.internal",
        "port": 6543,
        "login": "shop",
        "password": PASSWORD,
        "schema": "oltp_copy",
    }
    values.update(fields)
    return ConnectionInfo(conn_id=conn_id, **values)


def http(**fields: Any) -> ConnectionInfo:
    values: dict[str, Any] = {"conn_type": "http", "host": "ch.internal"}
    values.update(fields)
    return ConnectionInfo(conn_id=CLICKHOUSE_CONN_ID, **values)


# Connections to URLs and Settings


def test_a_postgres_connection_becomes_a_libpq_url() -> None:
    url = postgres_url(pg(extra={"sslmode": "require"}), "oltp")

    assert psycopg.conninfo.conninfo_to_dict(url) == {
        "host": "db.internal",
        "port": "6543",
        "user": "shop",
        "password": PASSWORD,
        "dbname": "oltp_copy",
        "sslmode": "require",
    }


def test_a_postgres_connection_without_port_or_database_takes_the_defaults() -> None:
    url = postgres_url(pg(port=None, schema="", login="", password=""), "ltv")

    assert psycopg.conninfo.conninfo_to_dict(url) == {
        "host": "db.internal",
        "port": "5432",
        "dbname": "ltv",
    }


def test_extras_that_are_not_libpq_options_are_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="batch_ltv.airflow_settings"):
        url = postgres_url(
            pg(extra={"cursor": "dictcursor", "sslmode": "disable"}), "x"
        )

    assert psycopg.conninfo.conninfo_to_dict(url)["sslmode"] == "disable"
    assert "cursor" not in url
    assert "extras cursor are not libpq options" in caplog.text


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        (pg(conn_type="mysql"), "type 'mysql' is not one of postgres, postgresql"),
        (pg(host=""), "it has no host"),
    ],
)
def test_a_wrong_postgres_connection_is_refused_by_its_id(
    info: ConnectionInfo, problem: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        postgres_url(info, "oltp")

    assert f"Airflow connection {SOURCE_CONN_ID}: {problem}" in str(caught.value)
    assert "airflow connections add revetl_source" in str(caught.value)


@pytest.mark.parametrize(
    ("info", "url"),
    [
        (http(), "http://ch.internal:8123"),
        (http(port=18123), "http://ch.internal:18123"),
        (http(conn_type="https"), "https://ch.internal:8443"),
        (http(schema="https", port=9443), "https://ch.internal:9443"),
        (http(login="ro", password="s e"), "http://ro:s%20e@ch.internal:8123"),
    ],
)
def test_an_http_connection_becomes_the_clickhouse_url(
    info: ConnectionInfo, url: str
) -> None:
    assert clickhouse_url(info) == url


def test_a_clickhouse_connection_of_another_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="type 'postgres' is not one of http"):
        clickhouse_url(http(conn_type="postgres"))


def test_the_connections_present_replace_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REVETL_TARGET_PG_PORT", "7434")
    monkeypatch.delenv("REVETL_TARGET_PG_URL", raising=False)
    connections = {SOURCE_CONN_ID: pg(), CLICKHOUSE_CONN_ID: http(port=18123)}

    settings = task_settings(connections.get)

    source = PostgresCluster(settings, "source")
    target = PostgresCluster(settings, "target")
    assert psycopg.conninfo.conninfo_to_dict(source.dsn())["dbname"] == "oltp_copy"
    assert source.external
    assert not target.external
    assert target.port == 7434
    assert ClickHouseServer(settings).url == "http://ch.internal:18123"


def test_without_connections_the_environment_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REVETL_SOURCE_PG_PORT", "7433")
    monkeypatch.delenv("REVETL_SOURCE_PG_URL", raising=False)

    settings = task_settings(lambda conn_id: None)

    assert settings == load_settings()
    assert PostgresCluster(settings, "source").port == 7433


def test_a_target_connection_without_database_takes_the_target_database() -> None:
    settings = task_settings({TARGET_CONN_ID: pg(TARGET_CONN_ID, schema="")}.get)

    dsn = PostgresCluster(settings, "target").dsn()
    assert (
        psycopg.conninfo.conninfo_to_dict(dsn)["dbname"] == settings.target_pg_database
    )


def test_the_logged_settings_hide_every_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connections = {
        SOURCE_CONN_ID: pg(),
        TARGET_CONN_ID: pg(TARGET_CONN_ID),
        CLICKHOUSE_CONN_ID: http(login="ro", password="ch-secret"),
    }
    with caplog.at_level(logging.INFO, logger="batch_ltv.airflow_settings"):
        settings = task_settings(connections.get)

    assert "connections=revetl_source,revetl_target,revetl_clickhouse" in caplog.text
    assert "clickhouse_url=http://ro:***@ch.internal:8123" in caplog.text
    for secret in ("p%40ss", PASSWORD, "ch-secret"):
        assert secret not in caplog.text
    assert safe_summary(settings) in caplog.text


def test_a_connection_does_not_show_its_password() -> None:
    assert PASSWORD not in repr(pg())


# revetl_seed params


def test_the_seed_defaults_are_the_seed_functions_defaults() -> None:
    params = inspect.signature(seed).parameters
    defaults = {name: params[name].default for name in SEED_DEFAULTS}

    assert {**defaults, "until": defaults["until"].isoformat()} == SEED_DEFAULTS
    assert seed_plan({}) == SeedPlan.checked(10_000, 1_000, 42, date(2025, 10, 13))


def test_seed_params_from_a_json_conf_are_taken() -> None:
    plan = seed_plan(
        {"users": "20", "max_sales_per_user": 5, "seed": 7, "until": "2025-06-01"}
    )

    assert plan == SeedPlan.checked(20, 5, 7, date(2025, 6, 1))


def test_every_bad_seed_param_is_named_in_one_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        seed_plan({"users": True, "seed": "x", "until": "2025-13-01"})

    message = str(caught.value)
    assert message.startswith("bad revetl_seed params, nothing was done: ")
    assert "users=True must be a whole number" in message
    assert "seed='x' must be a whole number" in message
    assert "until='2025-13-01' must be a day as YYYY-MM-DD" in message
    assert "airflow dags trigger revetl_seed --conf" in message


def test_seed_params_out_of_range_are_refused_with_the_plans_reasons() -> None:
    with pytest.raises(ConfigurationError) as caught:
        seed_plan({"users": 0, "until": "2024-06-01"})

    assert "users=0 must be between 1 and" in str(caught.value)
    assert "until=2024-06-01 must be after 2025-01-01" in str(caught.value)


# revetl_backfill params


def test_without_params_both_backfills_run_over_the_last_days() -> None:
    plan = backfill_plan({}, TODAY)

    first = TODAY - timedelta(days=HISTORY_DAYS - 1)
    assert plan == BackfillPlan("both", DayRange(first, TODAY), dry_run=False)
    assert plan.days is not None and plan.days.days == HISTORY_DAYS
    assert plan.history and plan.target


def test_the_airflow_form_defaults_mean_the_same() -> None:
    params = {"which": "both", "from": None, "to": None, "dry_run": False}

    assert backfill_plan(params, TODAY) == backfill_plan({}, TODAY)


def test_a_target_backfill_has_no_days() -> None:
    plan = backfill_plan({"which": "target", "dry_run": True}, TODAY)

    assert plan == BackfillPlan("target", None, dry_run=True)
    assert not plan.history
    assert plan.as_conf() == {"which": "target", "dry_run": True}


@pytest.mark.parametrize(
    ("given", "first", "last"),
    [
        (
            {"from": "2026-01-01", "to": "2026-01-31"},
            date(2026, 1, 1),
            date(2026, 1, 31),
        ),
        ({"from": "2026-03-01"}, date(2026, 3, 1), TODAY),
        ({"to": "2026-02-10"}, date(2026, 1, 12), date(2026, 2, 10)),
        ({"from": "2026-03-15", "to": "2026-03-15"}, TODAY, TODAY),
    ],
)
def test_a_history_range_takes_what_is_given_and_defaults_the_rest(
    given: dict[str, str], first: date, last: date
) -> None:
    plan = backfill_plan({"which": "history", **given}, TODAY)

    assert plan.days == DayRange(first, last)
    assert plan.as_conf() == {
        "which": "history",
        "from": first.isoformat(),
        "to": last.isoformat(),
    }


def test_a_resolved_plan_is_the_same_on_any_later_day() -> None:
    plan = backfill_plan({"which": "both", "dry_run": True}, TODAY)

    later = backfill_plan(plan.as_conf(), TODAY + timedelta(days=40))

    assert later == plan


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        (
            {"which": "history", "from": "2026-02-01", "to": "2026-01-01"},
            "from=2026-02-01 is after to=2026-01-01",
        ),
        ({"which": "history", "from": "2026-04-01"}, "from=2026-04-01 is after to="),
        (
            {"from": "2000-01-01", "to": "2026-01-01"},
            f"spans 9,498 days, more than the {MAX_DAYS:,} one run takes",
        ),
        ({"which": "history", "to": "01/02/2026"}, "to='01/02/2026' must be a day"),
        ({"which": "all"}, "which='all' must be one of history, target, both"),
        ({"which": "target", "dry_run": "yes"}, "dry_run='yes' must be true or false"),
        (
            {"which": "history", "dry_run": True},
            "dry_run=true applies to the target backfill only",
        ),
    ],
)
def test_bad_backfill_params_are_refused_before_any_work(
    params: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        backfill_plan(params, TODAY)

    message = str(caught.value)
    assert message.startswith("bad revetl_backfill params, nothing was done: ")
    assert problem in message
    assert "airflow dags trigger revetl_backfill --conf" in message


def test_every_bad_backfill_param_is_named_in_one_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        backfill_plan({"which": "both", "dry_run": 1, "from": "soon"}, TODAY)

    assert "dry_run=1 must be true or false" in str(caught.value)
    assert "from='soon' must be a day" in str(caught.value)


def test_dates_outside_the_history_are_ignored_for_a_target_backfill() -> None:
    plan = backfill_plan({"which": "target", "from": "2026-02-01", "to": "x"}, TODAY)

    assert plan.days is None


# Failures, commands, progress


def test_a_failed_step_names_itself_the_cause_and_the_command_to_rerun() -> None:
    conf = {"which": "history", "from": "2026-01-01", "to": "2026-01-31"}

    error = step_error("revetl_backfill", "history", ValueError("boom\nmore"), conf)

    assert type(error) is RevetlError
    assert str(error) == (
        "revetl_backfill step history failed: ValueError: boom. Check the stack with "
        "`revetl status` (and the task log), then run it again with "
        f"`airflow dags trigger revetl_backfill --conf '{json.dumps(conf)}'`"
    )


def test_a_failed_step_keeps_the_kind_of_our_errors() -> None:
    cause = RetriableError("cannot reach the product DB")

    error = step_error("revetl_backfill", "target", cause, {"which": "target"})

    assert isinstance(error, RetriableError)
    assert "step target failed: RetriableError: cannot reach the product DB" in str(
        error
    )


def test_the_trigger_command_carries_json_conf() -> None:
    command = trigger_command("revetl_seed", {"users": 20, "until": "2025-10-13"})

    conf = command.split("--conf ", 1)[1].strip("'")
    assert json.loads(conf) == {"users": 20, "until": "2025-10-13"}
    assert command.startswith("airflow dags trigger revetl_seed --conf '")


def test_progress_is_logged_about_every_tenth(caplog: pytest.LogCaptureFixture) -> None:
    progress = ProgressLog("seed")
    with caplog.at_level(logging.INFO, logger="batch_ltv.airflow_settings"):
        for done in range(0, 1001, 7):
            progress(done, 1000)
        progress(1000, 1000)

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 11
    assert lines[0] == "seed progress done=0 total=1000"
    assert lines[-1] == "seed progress done=1000 total=1000"
