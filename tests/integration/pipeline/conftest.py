"""The `pipeline` fixture: the live pipeline with connections to both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline_support import Pipeline

from services.stack import Stack


@pytest.fixture
def pipeline(stack: Stack) -> Iterator[Pipeline]:
    p = Pipeline(stack)
    yield p
    p.close()
