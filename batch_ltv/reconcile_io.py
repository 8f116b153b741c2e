"""Read the three sides of a reconciliation and wait for the pipeline to drain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from batch_ltv.reconcile import Report, TargetRow, compare
from connectors import debezium
from connectors.clickhouse_schema import current_ltv_query
from services.kafka import consumer_lag
from services.stack import Stack
from stream_app.ranks import RankRules

log = logging.getLogger(__name__)

SOURCE_LTV_SQL = """
SELECT u.id, COALESCE(s.ltv, 0)
FROM public.users AS u
LEFT JOIN (
    SELECT user_id, sum(amount)::bigint AS ltv FROM public.sales GROUP BY user_id
) AS s ON s.user_id = u.id
"""
SALE_OWNERS_SQL = "SELECT DISTINCT user_id FROM public.sales"
TARGET_SQL = (
    "SELECT user_id, ltv, user_class, discount_pct FROM public.user_ltv_history"
)


@dataclass(frozen=True)
class Lag:
    clickhouse: int
    worker: int

    @property
    def drained(self) -> bool:
        return self.clickhouse == 0 and self.worker == 0


def pipeline_lag(stack: Stack) -> Lag:
    """Messages the ClickHouse consumer and the worker have not committed yet."""
    bootstrap = stack.kafka.bootstrap
    source_topics = [debezium.topic_for(t) for t in debezium.TABLES]
    group = stack.settings.clickhouse_consumer_group
    clickhouse = sum(consumer_lag(bootstrap, group, source_topics).values())
    settings = stack.settings
    worker_lag = consumer_lag(bootstrap, settings.worker_group, [settings.ltv_topic])
    worker = sum(worker_lag.values())
    return Lag(clickhouse, worker)


def read_and_compare(stack: Stack, rules: RankRules) -> Report:
    with psycopg.connect(stack.source_pg.dsn()) as conn:
        source = {int(r[0]): int(r[1]) for r in conn.execute(SOURCE_LTV_SQL)}
        owners = {int(r[0]) for r in conn.execute(SALE_OWNERS_SQL)}
    with stack.clickhouse.client() as client:
        rows = client.query(current_ltv_query()).result_rows
    clickhouse = {int(r[0]): int(r[1]) for r in rows if not int(r[3])}
    with psycopg.connect(stack.target_pg.dsn()) as conn:
        target = {
            int(r[0]): TargetRow(int(r[1]), str(r[2]), int(r[3]))
            for r in conn.execute(TARGET_SQL)
        }
    return compare(source, owners, clickhouse, target, rules.class_for)


def reconcile(
    stack: Stack,
    rules: RankRules,
    timeout_s: float,
    on_wait: Callable[[Lag | None, Report | None], None],
) -> Report:
    """Compare once the pipeline has drained; retry until it agrees or time is up.

    Debezium confirms its position to Postgres only every second or so, and a
    change can still be between the source and Kafka when the Kafka lag reads
    zero: so a disagreement is re-checked until the timeout before it counts.
    """
    deadline = time.monotonic() + timeout_s
    report: Report | None = None
    while True:
        lag = pipeline_lag(stack)
        if lag.drained:
            report = read_and_compare(stack, rules)
            if report.agrees:
                return report
        if time.monotonic() >= deadline:
            return report if report is not None else read_and_compare(stack, rules)
        on_wait(lag, report)
        time.sleep(1.0)
