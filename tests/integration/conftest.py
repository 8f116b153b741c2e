"""Fixtures that give integration tests the live stack, starting it if needed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from clickhouse_connect.driver.client import Client

from services.config import Settings, load_settings
from services.stack import Stack
from services.wiring import bring_up

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    """The running, wired stack. What this starts, it stops at the end; what was
    already running is left running."""
    stack = Stack.from_settings(settings)
    was_down = [c for c in stack.components() if not c.status().healthy]
    bring_up(stack, START_TIMEOUT_S, lambda result: None)
    yield stack
    for component in reversed(was_down):
        component.stop()


@pytest.fixture
def unique() -> str:
    """A short suffix for the names of topics, tables and groups of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def source_conn(stack: Stack) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(stack.source_pg.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def clickhouse(stack: Stack) -> Iterator[Client]:
    client = stack.clickhouse.client()
    yield client
    client.close()
