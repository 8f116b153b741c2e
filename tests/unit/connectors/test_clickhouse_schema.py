"""The ClickHouse pipeline DDL: rendering, statement splitting, settings validation."""

from __future__ import annotations

import dataclasses
import re

import pytest

from connectors.clickhouse_schema import (
    ENGINE_TABLES,
    PipelineParams,
    changed_engines,
    current_ltv_query,
    engine_clauses,
    ods_ltv_query,
    pipeline_files,
    render_statements,
    split_statements,
    validate_params,
)
from services.errors import ConfigurationError

DEFAULTS = PipelineParams()


def params(**changes: object) -> PipelineParams:
    return dataclasses.replace(DEFAULTS, **changes)  # type: ignore[arg-type]  # kwargs


def joined(statements: list[str]) -> str:
    return "\n;\n".join(statements)


IDEMPOTENT = re.compile(
    r"CREATE (DATABASE|TABLE|MATERIALIZED VIEW) IF NOT EXISTS "
    r"|DROP TABLE IF EXISTS revetl\.ltv_kafka_sink(_mv)?$"
)


def test_every_statement_is_idempotent_and_filled() -> None:
    for use_kafka in (True, False):
        statements = render_statements(DEFAULTS, use_kafka=use_kafka)

        for statement in statements:
            assert IDEMPOTENT.match(statement), statement
            assert "SYNC" not in statement
            assert "{{" not in statement
            assert "}}" not in statement
            assert not statement.endswith(";")


def test_the_plain_variant_has_no_kafka_table() -> None:
    sql = joined(render_statements(DEFAULTS, use_kafka=False))

    assert "ENGINE = Kafka" not in sql
    assert "CREATE TABLE IF NOT EXISTS revetl.ltv_changes_out" in sql
    assert "revetl.cdc_kafka" not in sql


def test_the_kafka_variant_has_source_and_relay_sink_and_no_test_table() -> None:
    sql = joined(render_statements(DEFAULTS, use_kafka=True))

    assert sql.count("ENGINE = Kafka") == 1
    assert "ltv_changes_out" not in sql
    assert "kafka_topic_list = 'oltp.public.users,oltp.public.sales'" in sql
    assert "kafka_group_name = 'revetl-clickhouse'" in sql
    assert "ENGINE = URL('http://127.0.0.1:8124/ltv', 'JSONEachRow')" in sql
    assert "kafka_broker_list = '127.0.0.1:9092'" in sql
    assert "kafka_handle_error_mode = 'stream'" in sql
    assert "output_format_json_quote_64bit_integers = 0" in sql


def test_the_retired_kafka_sink_is_dropped_before_anything_is_created() -> None:
    statements = render_statements(DEFAULTS, use_kafka=True)

    assert statements[:2] == [
        "DROP TABLE IF EXISTS revetl.ltv_kafka_sink_mv",
        "DROP TABLE IF EXISTS revetl.ltv_kafka_sink",
    ]
    assert not any("DROP" in s for s in render_statements(DEFAULTS, use_kafka=False))


def test_the_kafka_source_is_created_last() -> None:
    statements = render_statements(DEFAULTS, use_kafka=True)

    assert pipeline_files(True)[-1] == "kafka_source.sql"
    assert "revetl.cdc_kafka_mv" in statements[-1]
    assert statements[-2].startswith("CREATE TABLE IF NOT EXISTS revetl.cdc_kafka\n")


def test_values_are_rendered_as_quoted_literals_and_integers() -> None:
    custom = params(
        kafka_brokers="k1.example.com:9092,10.0.0.7:19092",
        users_topic="cdc.users",
        sales_topic="cdc.sales",
        relay_url="http://[::1]:18124/relay/ltv",
        consumer_group="grp_1",
        flush_interval_ms=250,
        max_block_size=1000,
        sales_index_granularity=256,
    )

    sql = joined(render_statements(custom, use_kafka=True))

    assert "kafka_broker_list = 'k1.example.com:9092,10.0.0.7:19092'" in sql
    assert "kafka_topic_list = 'cdc.users,cdc.sales'" in sql
    assert "topic = 'cdc.users', 'user', topic = 'cdc.sales', 'sale'" in sql
    assert "ENGINE = URL('http://[::1]:18124/relay/ltv', 'JSONEachRow')" in sql
    assert "kafka_flush_interval_ms = 250," in sql
    assert "kafka_max_block_size = 1000," in sql
    assert "index_granularity = 256" in sql


@pytest.mark.parametrize(
    "setting",
    ["users_topic", "sales_topic", "consumer_group"],
)
@pytest.mark.parametrize(
    "value",
    ["bad topic", "x'; DROP DATABASE revetl; --", "", "..", "t" * 250, "naïve"],
)
def test_a_bad_name_is_refused_naming_the_setting(setting: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        render_statements(params(**{setting: value}))

    assert f"{setting}={value!r}" in str(caught.value)


@pytest.mark.parametrize(
    "value",
    ["localhost", "host:0", "host:70000", "a b:9092", "h:9092,", "h:9092;x:1", "-h:1"],
)
def test_a_bad_broker_list_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="kafka_brokers="):
        validate_params(params(kafka_brokers=value))


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("flush_interval_ms", 0),
        ("flush_interval_ms", True),
        ("max_block_size", 1_048_449),
        ("max_block_size", "65536"),
        ("sales_index_granularity", 8),
        ("sales_by_id_index_granularity", 1 << 20),
    ],
)
def test_a_bad_number_is_refused(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"{setting}="):
        validate_params(params(**{setting: value}))


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1:8124/ltv",
        "http://127.0.0.1/ltv",
        "http://127.0.0.1:0/ltv",
        "http://127.0.0.1:8124/ltv?x=1",
        "http://127.0.0.1:8124/l'tv",
        "ftp://127.0.0.1:8124/ltv",
        "",
    ],
)
def test_a_bad_relay_url_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="relay_url="):
        validate_params(params(relay_url=value))


def test_the_same_topic_twice_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="two different topics"):
        validate_params(params(sales_topic=DEFAULTS.users_topic))


def test_every_problem_is_listed_in_one_error() -> None:
    bad = params(users_topic="a b", consumer_group="", flush_interval_ms=-1)

    with pytest.raises(ConfigurationError) as caught:
        validate_params(bad)

    message = str(caught.value)
    assert "users_topic='a b'" in message
    assert "consumer_group=''" in message
    assert "flush_interval_ms=-1" in message
    assert message.endswith("fix these settings and apply again")


def test_the_defaults_are_valid() -> None:
    validate_params(DEFAULTS)


def test_split_drops_comment_lines_and_keeps_a_last_unterminated_statement() -> None:
    sql = "-- a comment; not a statement;\nCREATE TABLE a (x Int8)\nENGINE = Null;\n"
    sql += "  -- indented comment\n\nSELECT 1"

    assert split_statements(sql) == [
        "CREATE TABLE a (x Int8)\nENGINE = Null",
        "SELECT 1",
    ]


def test_the_reconciliation_query_reads_user_ltv_final() -> None:
    query = current_ltv_query()

    assert "FROM revetl.user_ltv FINAL" in query
    assert query.startswith("SELECT user_id, ltv, sale_count, user_deleted")
    assert "--" not in query


def test_the_ods_query_reads_current_sales() -> None:
    query = ods_ltv_query()

    assert "FROM revetl.sales FINAL" in query
    assert "--" not in query


def test_the_engine_clauses_are_the_kafka_source_and_the_relay_sink() -> None:
    clauses = engine_clauses(render_statements(DEFAULTS, use_kafka=True))

    assert set(clauses) == set(ENGINE_TABLES)
    assert clauses["cdc_kafka"].startswith("Kafka SETTINGS kafka_broker_list = ")
    assert "kafka_flush_interval_ms = 500," in clauses["cdc_kafka"]
    assert clauses["ltv_relay_sink"] == (
        "URL('http://127.0.0.1:8124/ltv', 'JSONEachRow') "
        "SETTINGS output_format_json_quote_64bit_integers = 0"
    )


def test_only_an_existing_table_with_another_clause_is_changed() -> None:
    wanted = engine_clauses(render_statements(DEFAULTS, use_kafka=True))
    moved = engine_clauses(
        render_statements(params(relay_url="http://127.0.0.1:9999/ltv"))
    )
    # system.tables.engine_full has the clause on one line
    as_stored = {name: " ".join(clause.split()) for name, clause in wanted.items()}

    assert changed_engines(wanted, as_stored) == []
    assert changed_engines(wanted, {}) == []
    assert changed_engines(moved, as_stored) == ["ltv_relay_sink"]
    slower = engine_clauses(render_statements(params(flush_interval_ms=75)))
    assert changed_engines(slower, as_stored) == ["cdc_kafka"]
