"""Airflow DAG `revetl_backfill`: the history and target backfills, as in the CLI."""

from __future__ import annotations

from datetime import UTC

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from batch_ltv.airflow_settings import (
    HISTORY_DAYS,
    MANUAL_DAG,
    WHICH,
    BackfillPlan,
    ProgressLog,
    backfill_plan,
    step_error,
    task_settings,
)

DAG_ID = "revetl_backfill"

DOC = f"""
Runs `revetl backfill history` (each day's LTV and class of every user into
ClickHouse `dds.user_ltv_history`; a range run again is replaced) and/or `revetl
backfill target` (re-rank every user into the product DB through the stream's
guarded upsert; `dry_run` only counts who would change class). Each backfill is
recorded in the product DB's `backfill_runs`; the task's XCom holds that record.

Without `from`/`to` the history covers the {HISTORY_DAYS} days up to the run's day.
Servers: the `revetl_target` and `revetl_clickhouse` connections if they exist,
else `REVETL_*`.
"""


@dag(
    dag_id=DAG_ID,
    doc_md=DOC,
    **MANUAL_DAG,
    params={
        "which": Param(
            "both",
            type="string",
            enum=list(WHICH),
            description="history, target, or both (history first).",
        ),
        "from": Param(
            None,
            type=["null", "string"],
            format="date",
            description=f"First execution day of the history, YYYY-MM-DD; default: "
            f"{HISTORY_DAYS - 1} days before `to`.",
        ),
        "to": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Last execution day of the history (included), YYYY-MM-DD; "
            "default: the day the run was triggered (UTC).",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Target only: count who would change class, write nothing.",
        ),
    },
)
def revetl_backfill() -> None:
    check_params() >> history() >> target()


@task(task_id="check_params")
def check_params() -> dict[str, object]:
    """The params with defaults resolved, or a clear error before any work."""
    return _plan().as_conf()


@task(task_id="history")
def history() -> dict[str, object]:
    """`revetl backfill history` for the plan's days; the run record goes to XCom."""
    from batch_ltv.backfill_io import backfill_history

    plan = _plan()
    if plan.days is None:
        raise AirflowSkipException(f"which={plan.which}: no history backfill")
    try:
        run = backfill_history(
            task_settings(),
            plan.days.first,
            plan.days.last,
            on_progress=ProgressLog("history"),
        )
    except Exception as exc:
        raise step_error(DAG_ID, "history", exc, plan.as_conf()) from exc
    return run.as_dict()


@task(task_id="target", trigger_rule="none_failed")
def target() -> dict[str, object]:
    """`revetl backfill target [--dry-run]`; its summary goes to XCom."""
    from batch_ltv.backfill_io import backfill_target

    plan = _plan()
    if not plan.target:
        raise AirflowSkipException(f"which={plan.which}: no target backfill")
    try:
        result = backfill_target(
            task_settings(), dry_run=plan.dry_run, on_progress=ProgressLog("target")
        )
    except Exception as exc:
        raise step_error(DAG_ID, "target", exc, plan.as_conf()) from exc
    return result.summary()


def _plan() -> BackfillPlan:
    """The run's checked params; missing days count from the day the run was made,
    so every task of one run resolves them alike."""
    context = get_current_context()
    today = context["dag_run"].run_after.astimezone(UTC).date()
    return backfill_plan(context["params"], today)


revetl_backfill()
