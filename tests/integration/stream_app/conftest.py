"""Fixtures for the stream worker's tests: their own target schema and Kafka topic."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # admin re-exports it without __all__
from psycopg import sql

from services.config import Settings
from services.kafka import admin_client
from services.stack import Stack
from stream_app import target

START_TIMEOUT_S = 180.0
TOPIC_PARTITIONS = 2


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    """The stack; these tests need only the target Postgres and Kafka.

    Replaces the shared fixture here because that one starts the whole stack when
    any component is down (ClickHouse, say) and then stops every component at the
    end, including those it did not start. This one starts only what it needs and
    is down, and stops only that.
    """
    stack = Stack.from_settings(settings)
    started = []
    for component in (stack.target_pg, stack.kafka):
        if component.status().healthy:
            continue
        if component.start():
            started.append(component)
        component.wait_healthy(START_TIMEOUT_S)
        component.after_start()
    yield stack
    for component in reversed(started):
        component.stop()


@pytest.fixture
def target_conn(stack: Stack) -> Iterator[target.Connection]:
    with psycopg.connect(stack.target_pg.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def schema(target_conn: target.Connection, unique: str) -> Iterator[str]:
    """A fresh schema with the rank tables, dropped afterwards."""
    name = f"revetl_test_{unique}"
    target.apply_schema(target_conn, name)
    yield name
    target_conn.execute(
        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
    )


@pytest.fixture
def kafka_admin(stack: Stack) -> AdminClient:
    return admin_client(stack.kafka.bootstrap)


@pytest.fixture
def topic(kafka_admin: AdminClient, unique: str) -> Iterator[str]:
    """A fresh topic of its own, deleted afterwards."""
    name = f"revetl.test.ltv.{unique}"
    futures = kafka_admin.create_topics([NewTopic(name, TOPIC_PARTITIONS, 1)])
    futures[name].result(timeout=30)
    yield name
    kafka_admin.delete_topics([name])[name].result(timeout=30)


@pytest.fixture
def group(kafka_admin: AdminClient, unique: str) -> Iterator[str]:
    """A consumer group name of its own, deleted afterwards if it was used."""
    name = f"revetl-test-worker-{unique}"
    yield name
    for future in kafka_admin.delete_consumer_groups([name]).values():
        with contextlib.suppress(Exception):  # a group that never joined is absent
            future.result(timeout=30)
