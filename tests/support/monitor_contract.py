"""The metric names the monitor serves, and how to find metric names in PromQL."""

from __future__ import annotations

import re

METRICS = frozenset({
    "revetl_consumer_lag_messages",
    "revetl_consumer_group_members",
    "revetl_replication_slot_lag_bytes",
    "revetl_replication_slot_active",
    "revetl_replication_slot_wal_status",
    "revetl_connector_up",
    "revetl_clickhouse_consumer_last_poll_age_seconds",
    "revetl_clickhouse_consumer_messages_read",
    "revetl_clickhouse_consumer_exceptions",
    "revetl_dead_letters",
    "revetl_worker_events_total",
    "revetl_worker_upserts_total",
    "revetl_worker_rank_changes_total",
    "revetl_worker_dead_letters_total",
    "revetl_worker_batches_total",
    "revetl_worker_up",
    "revetl_end_to_end_latency_seconds",
    "revetl_freshness_seconds",
    "revetl_component_up",
    "revetl_monitor_collect_seconds",
    "revetl_monitor_errors_total",
})  # fmt: skip
"""The monitor's metric families, as agreed for issue #5."""

HISTOGRAMS = frozenset({"revetl_end_to_end_latency_seconds"})
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
PROMETHEUS_METRICS = frozenset({"up", "scrape_duration_seconds"})
"""Series Prometheus itself adds to every scrape."""

_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan",
})  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_NAME = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions and labels left out).

    Histogram series (`_bucket`, `_sum`, `_count`) count as their family's name.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(family_of(name))
    return names


def family_of(series: str) -> str:
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and base in HISTOGRAMS:
            return base
    return series


def unknown_names(expr: str) -> set[str]:
    """Names in expr that neither the monitor nor Prometheus serves."""
    return metric_names(expr) - METRICS - PROMETHEUS_METRICS
