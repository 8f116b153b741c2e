"""The Airflow DAGs: the folder imports cleanly, and dag.test() runs both on the stack.

Skipped when apache-airflow is not installed, unless REVETL_REQUIRE_AIRFLOW=1 (CI),
which turns the missing package into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from clickhouse_connect.driver.client import Client
from pipeline_support import Pipeline
from psycopg import sql

from batch_ltv.seed import SeedPlan, user_columns
from services.config import REPO_ROOT
from services.stack import Stack

if importlib.util.find_spec("airflow") is None:
    INSTALL = "pip install -e '.[airflow]' (apache-airflow 3)"
    if os.environ.get("REVETL_REQUIRE_AIRFLOW") == "1":
        pytest.fail(
            f"apache-airflow is not installed but REVETL_REQUIRE_AIRFLOW=1: {INSTALL}",
            pytrace=False,
        )
    pytest.skip(
        f"apache-airflow is not installed: {INSTALL}; REVETL_REQUIRE_AIRFLOW=1 makes "
        "this a failure",
        allow_module_level=True,
    )

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # Airflow's in-process execution API imports FastAPI's test client, which warns
    # that Starlette wants httpx2; nothing we can change.
    pytest.mark.filterwarnings(
        "ignore:Using `httpx` with `starlette.testclient` is deprecated:UserWarning"
    ),
]

DAGS_DIR = REPO_ROOT / "batch_ltv" / "dags"
SOURCE_SQL = REPO_ROOT / "connectors" / "postgres" / "source.sql"
MIGRATE_TIMEOUT_S = 600
SALE_AMOUNT = 1_500_000
"""One sale that puts a new user in class B (from 1,000,000)."""


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated sqlite Airflow in a temporary AIRFLOW_HOME, for this session.

    Airflow reads AIRFLOW_HOME when it is first imported, so nothing may import it
    before this fixture.
    """
    if "airflow" in sys.modules:
        pytest.fail("airflow was imported before its AIRFLOW_HOME was set")
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", str(home))
        patch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_DIR))
        patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        patch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/db")
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT_S,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        yield home


@dataclass(frozen=True)
class Dags:
    """The parsed DAG folder, and each DAG's params as declared."""

    bag: Any
    defaults: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def dags(airflow_home: Path) -> Iterator[Dags]:
    """The DAG folder parsed in this process.

    Importing Airflow and running tasks in this process sets the root logger, a
    SIGTERM handler and AIRFLOW_CTX_* variables; they are put back after the module
    so later tests run as without Airflow.
    """
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved_term = signal.getsignal(signal.SIGTERM)
    saved_ctx = {n: v for n, v in os.environ.items() if n.startswith("AIRFLOW_CTX_")}
    try:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAGS_DIR))
        defaults = {d.dag_id: dict(d.params) for d in bag.dags.values()}
        yield Dags(bag, defaults)
    finally:
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        signal.signal(signal.SIGTERM, saved_term)
        for name in [n for n in os.environ if n.startswith("AIRFLOW_CTX_")]:
            del os.environ[name]
        os.environ.update(saved_ctx)


@dataclass(frozen=True)
class Run:
    state: str
    tasks: dict[str, str]
    xcom: dict[str, Any]


def run_dag(dags: Dags, dag_id: str, conf: dict[str, Any]) -> Run:
    """dag.test() with `conf`: the run's state, each task's state, return values.

    dag.test() runs the tasks in this process, where Airflow leaves a run's conf in
    the task's params, and a later run of the same DAG would take it for the
    default; so every run passes every param, declared defaults first.
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    full_conf = {**dags.defaults[dag_id], **conf}
    run = dags.bag.get_dag(dag_id).test(run_conf=full_conf)
    tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    with create_session() as session:
        query = XComModel.get_many(
            run_id=run.run_id, dag_ids=dag_id, key="return_value"
        )
        rows = session.scalars(query).all()
        xcom = {row.task_id: XComModel.deserialize_value(row) for row in rows}
    return Run(str(run.state), tasks, xcom)


def test_the_dag_folder_imports_without_errors(dags: Dags) -> None:
    assert dags.bag.import_errors == {}
    assert set(dags.bag.dag_ids) == {"revetl_seed", "revetl_backfill"}
    for dag_id, params in (
        ("revetl_seed", {"users", "max_sales_per_user", "seed", "until"}),
        ("revetl_backfill", {"which", "from", "to", "dry_run"}),
    ):
        dag = dags.bag.get_dag(dag_id)
        assert dag.schedule is None
        assert dag.catchup is False
        assert set(dag.params) == params


# revetl_seed


@pytest.fixture
def seed_database(
    stack: Stack, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A new database with the shop's tables, the `revetl_source` connection."""
    name = f"airflowseed_{unique}"
    with psycopg.connect(stack.source_pg.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = stack.source_pg.dsn(database=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SOURCE_SQL.read_text())
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
        connection = {
            "conn_type": "postgres",
            "host": parts["host"],
            "port": int(str(parts["port"])),
            "login": parts["user"],
            "password": parts["password"],
            "schema": name,
        }
        monkeypatch.setenv("AIRFLOW_CONN_REVETL_SOURCE", json.dumps(connection))
        yield dsn
    finally:
        with psycopg.connect(stack.source_pg.dsn("postgres"), autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            conn.execute(drop)


def counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        users = conn.execute("SELECT count(*) FROM public.users").fetchone()
        sales = conn.execute("SELECT count(*) FROM public.sales").fetchone()
    assert users is not None and sales is not None
    return int(users[0]), int(sales[0])


def test_revetl_seed_seeds_the_connections_database_once(
    dags: Dags, stack: Stack, seed_database: str
) -> None:
    conf = {"users": 100, "max_sales_per_user": 5, "seed": 7, "until": "2025-06-01"}
    sales = user_columns(SeedPlan.checked(100, 5, 7, date(2025, 6, 1))).sales_total
    shop_before = counts(stack.source_pg.dsn())

    first = run_dag(dags, "revetl_seed", conf)
    again = run_dag(dags, "revetl_seed", conf)

    assert first.state == again.state == "success"
    assert first.xcom["seed"]["plan"] == conf
    assert (first.xcom["seed"]["users_added"], first.xcom["seed"]["sales_added"]) == (
        100,
        sales,
    )
    assert (again.xcom["seed"]["users_added"], again.xcom["seed"]["sales_added"]) == (
        0,
        0,
    )
    assert counts(seed_database) == (100, sales)
    assert counts(stack.source_pg.dsn()) == shop_before


def test_revetl_seed_refuses_bad_params(dags: Dags, seed_database: str) -> None:
    run = run_dag(dags, "revetl_seed", {"users": 20, "until": "2024-06-01"})

    assert run.state == "failed"
    assert run.tasks == {"seed": "failed"}
    assert counts(seed_database) == (0, 0)


# revetl_backfill


@pytest.fixture
def ranked_user(stack: Stack) -> Iterator[int]:
    """A new user with one sale, ranked by the stream into class B."""
    pipeline = Pipeline(stack)
    try:
        user_id = pipeline.add_user()
        pipeline.add_sale(user_id, SALE_AMOUNT)
        assert pipeline.wait_rank(user_id, SALE_AMOUNT) == (SALE_AMOUNT, "B", 5)
        yield user_id
    finally:
        pipeline.close()


def backfill_run(stack: Stack, run_id: int) -> tuple[str, str, int]:
    with psycopg.connect(stack.target_pg.dsn()) as conn:
        row = conn.execute(
            "SELECT kind, outcome, rows FROM public.backfill_runs WHERE id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1]), int(row[2])


def last_backfill_id(stack: Stack) -> int:
    with psycopg.connect(stack.target_pg.dsn()) as conn:
        exists = conn.execute("SELECT to_regclass('public.backfill_runs')").fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute("SELECT coalesce(max(id), 0) FROM public.backfill_runs")
        found = row.fetchone()
    assert found is not None
    return int(found[0])


def history_counts(clickhouse: Client, first: date, last: date) -> tuple[int, int]:
    """Rows of the days first..last, and distinct (user, day) pairs among them."""
    rows = clickhouse.query(
        "SELECT count(), uniqExact(user_id, execution_day) FROM dds.user_ltv_history "
        "WHERE execution_day BETWEEN %(first)s AND %(last)s",
        parameters={"first": first, "last": last},
    ).result_rows
    return int(rows[0][0]), int(rows[0][1])


def user_history(clickhouse: Client, user_id: int) -> dict[date, tuple[int, str]]:
    rows = clickhouse.query(
        "SELECT execution_day, ltv, user_class FROM dds.user_ltv_history "
        "WHERE user_id = %(user)s ORDER BY execution_day",
        parameters={"user": user_id},
    ).result_rows
    return {day: (int(ltv), str(cls)) for day, ltv, cls in rows}


def test_revetl_backfill_history_writes_the_range_once(
    dags: Dags, stack: Stack, clickhouse: Client, ranked_user: int
) -> None:
    today = datetime.now(UTC).date()
    first, last = today - timedelta(days=2), today + timedelta(days=2)
    conf = {"which": "history", "from": first.isoformat(), "to": last.isoformat()}

    run = run_dag(dags, "revetl_backfill", conf)
    again = run_dag(dags, "revetl_backfill", conf)

    assert run.state == again.state == "success"
    assert run.tasks == {
        "check_params": "success",
        "history": "success",
        "target": "skipped",
    }
    assert run.xcom["check_params"] == conf
    record = again.xcom["history"]
    assert (record["kind"], record["outcome"]) == ("history", "succeeded")
    assert record["params"]["from"] == first.isoformat()
    assert record["params"]["to"] == last.isoformat()
    assert backfill_run(stack, record["id"]) == ("history", "succeeded", record["rows"])
    total, distinct = history_counts(clickhouse, first, last)
    assert total == distinct == record["rows"] > 0
    assert user_history(clickhouse, ranked_user)[last] == (SALE_AMOUNT, "B")


def test_revetl_backfill_target_dry_run_changes_nothing_then_the_run_does(
    dags: Dags, stack: Stack, ranked_user: int
) -> None:
    with psycopg.connect(stack.target_pg.dsn(), autocommit=True) as conn:
        conn.execute(
            "UPDATE public.user_ltv_history SET ltv = 99000000, user_class = 'SS', "
            "discount_pct = 30 WHERE user_id = %s",
            (ranked_user,),
        )
    pipeline = Pipeline(stack)
    try:
        dry = run_dag(dags, "revetl_backfill", {"which": "target", "dry_run": True})
        after_dry = pipeline.rank(ranked_user)
        real = run_dag(dags, "revetl_backfill", {"which": "target"})
        after_real = pipeline.rank(ranked_user)
    finally:
        pipeline.close()

    assert dry.state == real.state == "success"
    assert dry.tasks == {
        "check_params": "success",
        "history": "skipped",
        "target": "success",
    }
    assert after_dry == (99_000_000, "SS", 30)
    assert after_real == (SALE_AMOUNT, "B", 5)
    for result, outcome in (
        (dry.xcom["target"], "dry-run"),
        (real.xcom["target"], "succeeded"),
    ):
        moves = {(m["from"], m["to"]): m["users"] for m in result["moves"]}
        assert moves.get(("SS", "B"), 0) >= 1
        assert result["run"]["outcome"] == outcome
        run_id = result["run"]["id"]
        assert backfill_run(stack, run_id) == ("target", outcome, result["fresh"])
    assert dry.xcom["target"]["dry_run"] is True
    assert real.xcom["target"]["dry_run"] is False


def test_revetl_backfill_defaults_to_both_over_the_last_30_days(
    dags: Dags, stack: Stack, ranked_user: int
) -> None:
    before = datetime.now(UTC).date()
    run = run_dag(dags, "revetl_backfill", {})
    after = datetime.now(UTC).date()

    assert run.state == "success"
    assert set(run.tasks.values()) == {"success"}
    plan = run.xcom["check_params"]
    last = date.fromisoformat(plan["to"])
    assert before <= last <= after
    assert plan == {
        "which": "both",
        "from": (last - timedelta(days=29)).isoformat(),
        "to": last.isoformat(),
        "dry_run": False,
    }
    history, target = run.xcom["history"], run.xcom["target"]
    assert history["params"]["from"] == plan["from"]
    assert history["params"]["to"] == plan["to"]
    assert backfill_run(stack, history["id"]) == (
        "history",
        "succeeded",
        history["rows"],
    )
    assert backfill_run(stack, target["run"]["id"])[:2] == ("target", "succeeded")


def test_revetl_backfill_refuses_bad_params_before_any_work(
    dags: Dags, stack: Stack
) -> None:
    before = last_backfill_id(stack)
    conf = {"which": "history", "from": "2025-02-01", "to": "2025-01-01"}

    run = run_dag(dags, "revetl_backfill", conf)

    assert run.state == "failed"
    assert run.tasks == {
        "check_params": "failed",
        "history": "upstream_failed",
        "target": "upstream_failed",
    }
    assert last_backfill_id(stack) == before
