"""Airflow DAG `revetl_seed`: fill the source database, as `revetl seed` does."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from batch_ltv.airflow_settings import (
    MANUAL_DAG,
    SEED_DEFAULTS,
    ProgressLog,
    seed_plan,
    step_error,
    task_settings,
)

DAG_ID = "revetl_seed"

DOC = """
Seeds the source database with generated users and sales (Faker `ru_RU`), exactly
as `revetl seed` does; CDC carries the rows to ClickHouse and the product DB. The
same params again add nothing; other params on a seeded database are refused.
The source is the `revetl_source` connection if it exists, else `REVETL_*`.
"""


@dag(
    dag_id=DAG_ID,
    doc_md=DOC,
    **MANUAL_DAG,
    params={
        "users": Param(
            SEED_DEFAULTS["users"],
            type="integer",
            minimum=1,
            description="Users to create, ids 1..users.",
        ),
        "max_sales_per_user": Param(
            SEED_DEFAULTS["max_sales_per_user"],
            type="integer",
            minimum=0,
            description="Each user gets a uniform 0..this many sales.",
        ),
        "seed": Param(
            SEED_DEFAULTS["seed"],
            type="integer",
            minimum=0,
            description="Same seed, same rows.",
        ),
        "until": Param(
            SEED_DEFAULTS["until"],
            type="string",
            format="date",
            description="Sales are dated before this day (YYYY-MM-DD).",
        ),
    },
)
def revetl_seed() -> None:
    seed_source()


@task(task_id="seed")
def seed_source() -> dict[str, Any]:
    """Write the plan into the source database; the counts go to XCom."""
    from batch_ltv.seed_io import seed
    from services.postgres import PostgresCluster

    plan = seed_plan(get_current_context()["params"])
    conf = {
        "users": plan.users,
        "max_sales_per_user": plan.max_sales_per_user,
        "seed": plan.seed,
        "until": plan.until.isoformat(),
    }
    try:
        dsn = PostgresCluster(task_settings(), "source").dsn()
        result = seed(
            dsn,
            plan.users,
            plan.max_sales_per_user,
            plan.seed,
            plan.until,
            on_progress=ProgressLog("seed"),
        )
    except Exception as exc:
        raise step_error(DAG_ID, "seed", exc, conf) from exc
    return {
        "plan": conf,
        "users_added": result.users_added,
        "sales_added": result.sales_added,
        "seconds": round(result.seconds, 3),
        "sales_per_second": round(result.sales_per_second),
    }


revetl_seed()
