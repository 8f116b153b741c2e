"""Renders the ClickHouse LTV pipeline DDL from validated settings and applies it."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.errors import ConfigurationError, FatalError

log = logging.getLogger(__name__)

DATABASE = "revetl"
LANDING_TABLE = "revetl.cdc_landing"
DEAD_LETTERS_TABLE = "revetl.dead_letters"
PLAIN_SINK_TABLE = "revetl.ltv_changes_out"
USER_LTV_TABLE = "revetl.user_ltv"

SQL_DIR = Path(__file__).resolve().parent / "clickhouse"
CORE_FILE = "pipeline.sql"
KAFKA_SOURCE_FILE = "kafka_source.sql"
RELAY_SINK_FILE = "relay_sink.sql"
RETIRED_FILE = "retired.sql"
PLAIN_SINK_FILE = "plain_sink.sql"
CURRENT_LTV_FILE = "current_ltv.sql"
ODS_LTV_FILE = "ods_ltv.sql"

# Kafka's own rule for topic names; consumer groups use the same characters here.
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_BROKER_RE = re.compile(
    r"([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?):([0-9]{1,5})"
)
_PLACEHOLDER_RE = re.compile(r"\{\{([a-z_]+)\}\}")
_RELAY_URL_RE = re.compile(
    r"https?://([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:]+\])"
    r":([0-9]{1,5})(/[A-Za-z0-9._~/-]*)?"
)

# Tables whose engine clause holds settings (brokers, topics, flush interval, the
# relay's URL), with the view that feeds or drains them. CREATE ... IF NOT EXISTS
# would keep an old clause, so a changed one means dropping both and creating
# them again; the consumer group, and so its committed offsets, stay.
ENGINE_TABLES = {
    "cdc_kafka": "cdc_kafka_mv",
    "ltv_relay_sink": "ltv_relay_sink_mv",
}
_CREATE_TABLE_RE = re.compile(r"CREATE TABLE IF NOT EXISTS revetl\.(\w+)\s*\(")
_ENGINE_RE = re.compile(r"\)\s*ENGINE\s*=\s*(.+)\Z", re.DOTALL)

# One insert must stay one block (see pipeline.sql): below min_insert_block_size_rows.
MAX_BLOCK_SIZE_LIMIT = 1_000_000

_INTEGER_LIMITS = {
    "flush_interval_ms": (1, 600_000),
    "max_block_size": (1, MAX_BLOCK_SIZE_LIMIT),
    "sales_index_granularity": (16, 65536),
    "sales_by_id_index_granularity": (16, 65536),
}

BAD_SETTINGS_MESSAGE = (
    "invalid ClickHouse pipeline settings: %s; fix these settings and apply again"
)


class CommandClient(Protocol):
    """Anything that runs one SQL statement: a clickhouse-connect Client, say."""

    def command(self, cmd: str) -> object: ...


@dataclass(frozen=True)
class PipelineParams:
    """The parameters of the pipeline DDL; validated by `validate_params`."""

    kafka_brokers: str = "127.0.0.1:9092"
    """Comma-separated host:port list the Kafka tables connect to."""
    users_topic: str = "oltp.public.users"
    """Debezium topic of public.users."""
    sales_topic: str = "oltp.public.sales"
    """Debezium topic of public.sales."""
    relay_url: str = "http://127.0.0.1:8124/ltv"
    """Where ClickHouse POSTs each block of LTV changes: the LTV relay, which
    produces them to the LTV topic. ClickHouse itself must be able to reach it."""
    consumer_group: str = "revetl-clickhouse"
    """Consumer group of the source Kafka table."""
    flush_interval_ms: int = 500
    """Longest wait before a partial block is processed, in ms. Lower means fresher
    LTVs and more, smaller blocks (each block costs a recompute); ClickHouse's
    default is 7,500."""
    max_block_size: int = 65536
    """Most messages per block. Bounds the cost of one block; must stay below the
    one-block-per-insert limit of 1,048,449 rows."""
    sales_index_granularity: int = 1024
    """Rows per primary-key granule of revetl.sales. Smaller reads fewer rows per
    touched user at the price of a larger primary index in memory."""
    sales_by_id_index_granularity: int = 1024
    """Rows per granule of revetl.sales_by_id, read by sale id for every block."""


def validate_params(params: PipelineParams) -> None:
    """Raise one ConfigurationError that lists every bad setting."""
    problems = [
        *_topic_problems(params),
        *_name_problems("consumer_group", params.consumer_group),
        *_broker_problems(params.kafka_brokers),
        *_relay_url_problems(params.relay_url),
    ]
    for setting, (low, high) in _INTEGER_LIMITS.items():
        problems.extend(_int_problems(setting, getattr(params, setting), low, high))
    if problems:
        raise ConfigurationError(BAD_SETTINGS_MESSAGE % "; ".join(problems))


def _topic_problems(params: PipelineParams) -> list[str]:
    topics = {"users_topic": params.users_topic, "sales_topic": params.sales_topic}
    problems = [
        p for name, value in topics.items() for p in _name_problems(name, value)
    ]
    if params.users_topic == params.sales_topic:
        problems.append(
            f"users_topic={params.users_topic!r} and sales_topic="
            f"{params.sales_topic!r} must be two different topics"
        )
    return problems


def _name_problems(setting: str, value: object) -> list[str]:
    if (
        not isinstance(value, str)
        or _NAME_RE.fullmatch(value) is None
        or value in (".", "..")
    ):
        return [
            f"{setting}={value!r} is not a valid Kafka name "
            "(1-249 characters of A-Z a-z 0-9 . _ -)"
        ]
    return []


def _broker_problems(value: object) -> list[str]:
    bad = [f"kafka_brokers={value!r} is not a comma-separated host:port list"]
    if not isinstance(value, str) or not value:
        return bad
    for broker in value.split(","):
        match = _BROKER_RE.fullmatch(broker)
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            return bad
    return []


def _relay_url_problems(value: object) -> list[str]:
    if isinstance(value, str):
        match = _RELAY_URL_RE.fullmatch(value)
        if match is not None and 1 <= int(match.group(2)) <= 65535:
            return []
    return [
        f"relay_url={value!r} is not an http://host:port/path URL (path of "
        "A-Z a-z 0-9 . _ ~ / -, no query)"
    ]


def _int_problems(setting: str, value: object, low: int, high: int) -> list[str]:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        return [f"{setting}={value!r} must be an integer from {low} to {high}"]
    return []


def _string_literal(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _literals(params: PipelineParams) -> dict[str, str]:
    """SQL literals for every placeholder; only called on validated params."""
    return {
        "kafka_brokers": _string_literal(params.kafka_brokers),
        "users_topic": _string_literal(params.users_topic),
        "sales_topic": _string_literal(params.sales_topic),
        "source_topic_list": _string_literal(
            f"{params.users_topic},{params.sales_topic}"
        ),
        "relay_url": _string_literal(params.relay_url),
        "consumer_group": _string_literal(params.consumer_group),
        "flush_interval_ms": str(int(params.flush_interval_ms)),
        "max_block_size": str(int(params.max_block_size)),
        "sales_index_granularity": str(int(params.sales_index_granularity)),
        "sales_by_id_index_granularity": str(int(params.sales_by_id_index_granularity)),
    }


def _read_sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def _fill(template: str, literals: dict[str, str], source: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in literals:
            message = (
                f"{source} uses the unknown placeholder {{{{{name}}}}}; add it to "
            )
            message += "_literals() in connectors/clickhouse_schema.py"
            raise FatalError(message)
        return literals[name]

    return _PLACEHOLDER_RE.sub(replace, template)


def split_statements(sql: str) -> list[str]:
    """Split a .sql file of ours: whole-line comments dropped, ';' ends a line."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().removesuffix(";").strip())
            current = []
    rest = "\n".join(current).strip()
    if rest:
        statements.append(rest)
    return [s for s in statements if s]


def pipeline_files(use_kafka: bool) -> list[str]:
    """The .sql files of the pipeline, in the order they are applied."""
    if use_kafka:
        return [RETIRED_FILE, CORE_FILE, RELAY_SINK_FILE, KAFKA_SOURCE_FILE]
    return [CORE_FILE, PLAIN_SINK_FILE]


def render_statements(params: PipelineParams, *, use_kafka: bool = True) -> list[str]:
    """Every DDL statement of the pipeline, in order, values filled in.

    With use_kafka False there is no Kafka table at all: blocks enter through
    revetl.cdc_landing and the LTV changes land in revetl.ltv_changes_out.
    """
    validate_params(params)
    literals = _literals(params)
    statements: list[str] = []
    for name in pipeline_files(use_kafka):
        for statement in split_statements(_read_sql(name)):
            statements.append(_fill(statement, literals, name))
    return statements


def apply_pipeline(
    client: CommandClient, params: PipelineParams, *, use_kafka: bool = True
) -> int:
    """Create whatever is missing of the pipeline; return the statement count.

    Every statement is CREATE ... IF NOT EXISTS (or, in retired.sql, a DROP of
    what earlier versions created), so applying again changes nothing. The one
    update it makes: a Kafka source or relay sink whose engine clause differs
    from the settings (another flush interval, broker or relay URL) is dropped
    with its view and created again.
    """
    statements = render_statements(params, use_kafka=use_kafka)
    if use_kafka:
        _drop_changed_engine_tables(client, statements)
    log.info(
        "applying clickhouse pipeline statements=%d kafka=%s brokers=%s "
        "users_topic=%s sales_topic=%s relay_url=%s consumer_group=%s "
        "flush_interval_ms=%d max_block_size=%d",
        len(statements), use_kafka, params.kafka_brokers, params.users_topic,
        params.sales_topic, params.relay_url, params.consumer_group,
        params.flush_interval_ms, params.max_block_size,
    )  # fmt: skip
    for statement in statements:
        log.debug("clickhouse ddl: %s", statement.splitlines()[0])
        client.command(statement)
    log.info("clickhouse pipeline ready statements=%d", len(statements))
    return len(statements)


def engine_clauses(statements: list[str]) -> dict[str, str]:
    """Table name -> engine clause, whitespace folded, of the ENGINE_TABLES."""
    clauses = {}
    for statement in statements:
        created = _CREATE_TABLE_RE.match(statement)
        engine = _ENGINE_RE.search(statement)
        if created and engine and created.group(1) in ENGINE_TABLES:
            clauses[created.group(1)] = _fold(engine.group(1))
    return clauses


def changed_engines(wanted: dict[str, str], existing: dict[str, str]) -> list[str]:
    """The tables that exist with another engine clause than wanted."""
    return [
        name
        for name, clause in wanted.items()
        if name in existing and _fold(existing[name]) != clause
    ]


def _fold(text: str) -> str:
    return " ".join(text.split())


def _existing_engines(client: CommandClient) -> dict[str, str]:
    names = ", ".join(_string_literal(n) for n in ENGINE_TABLES)
    answer = client.command(
        f"SELECT name, engine_full FROM system.tables WHERE database = "
        f"'{DATABASE}' AND name IN ({names}) FORMAT JSONEachRow"
    )
    rows = [json.loads(line) for line in str(answer or "").splitlines() if line]
    return {row["name"]: row["engine_full"] for row in rows}


def _drop_changed_engine_tables(client: CommandClient, statements: list[str]) -> None:
    wanted = engine_clauses(statements)
    existing = _existing_engines(client)
    for name in changed_engines(wanted, existing):
        new = set(wanted[name].split(", ")) - set(_fold(existing[name]).split(", "))
        log.info(
            "recreating revetl.%s with its view, changed: %s",
            name, "; ".join(sorted(new)),
        )  # fmt: skip
        # No SYNC: on chDB 3.7.2 it never returns once a Kafka table has consumed.
        client.command(f"DROP TABLE IF EXISTS {DATABASE}.{ENGINE_TABLES[name]}")
        client.command(f"DROP TABLE IF EXISTS {DATABASE}.{name}")


def current_ltv_query() -> str:
    """SQL for every user's current LTV: user_id, ltv, sale_count, user_deleted.

    Deleted users stay, with user_deleted = 1; users never touched are absent.
    """
    return _single_statement(CURRENT_LTV_FILE)


def ods_ltv_query() -> str:
    """SQL recomputing user_id, ltv, sale_count from the current sales in the ODS.

    Users without a live sale are absent. Equal to current_ltv_query() for every
    user with sales once the pipeline has processed everything it received.
    """
    return _single_statement(ODS_LTV_FILE)


def _single_statement(name: str) -> str:
    statements = split_statements(_read_sql(name))
    if len(statements) != 1:
        raise FatalError(f"{name} holds {len(statements)} statements instead of one")
    return statements[0]
