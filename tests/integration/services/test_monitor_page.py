"""The monitor's live page in headless Chromium: it loads, lists the stack, and its
numbers move when sales flow, without a reload."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium_cdp import Chromium
from pipeline_support import Pipeline
from required_tools import required_tool

from services.config import REPO_ROOT, Settings
from services.stack import Stack

REQUIRE_ENV = "REVETL_REQUIRE_CHROMIUM"
PAGE_WAIT_S = 120.0
SCREENSHOT_COPY = REPO_ROOT / "bench" / "results" / "monitor-page.png"
SALES = (400_000, 700_000, 900_000)

COMPONENTS_JS = (
    "[...document.querySelectorAll('#components [data-component]')]"
    ".map(e => [e.dataset.component, e.dataset.healthy])"
)
EVENTS_JS = "document.getElementById('events').textContent.replace(/[^0-9]/g, '')"
EPOCH_JS = "Number(document.getElementById('updated-at').dataset.epoch || 0)"


def shown_events(browser: Chromium) -> int | None:
    """The worker's event count as the page shows it; None while it shows none."""
    digits = browser.evaluate(EVENTS_JS)
    return int(digits) if digits else None


def wait_events_above(browser: Chromium, floor: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    events = shown_events(browser)
    while (events is None or events <= floor) and time.monotonic() < deadline:
        time.sleep(0.5)
        events = shown_events(browser)
    return events


@pytest.fixture
def pipeline(stack: Stack) -> Iterator[Pipeline]:
    p = Pipeline(stack)
    yield p
    p.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    required_tool("chromium", "chromium", REQUIRE_ENV)
    with Chromium(tmp_path / "chromium", width=1440, height=1000) as chromium:
        yield chromium


def test_page_shows_the_stack_and_counts_new_sales(
    stack: Stack,
    settings: Settings,
    pipeline: Pipeline,
    browser: Chromium,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    browser.navigate(f"http://{settings.bind_host}:{settings.monitor_port}/")
    browser.evaluate("window.revetlTestMarker = 'no reload'")
    expected = {c.name for c in stack.components()}

    shown = browser.wait_for(
        f"{COMPONENTS_JS}.length >= {len(expected)} && {COMPONENTS_JS}", PAGE_WAIT_S
    )
    assert shown, browser.evaluate("document.body.innerText")
    assert expected <= {name for name, _ in shown}
    first_epoch = browser.evaluate(EPOCH_JS)
    before = wait_events_above(browser, -1, PAGE_WAIT_S)
    assert before is not None, browser.evaluate("document.body.innerText")

    user = pipeline.add_user()
    for amount in SALES:
        pipeline.add_sale(user, amount)
    rank = pipeline.wait_rank(user, sum(SALES))
    assert rank is not None and rank[0] == sum(SALES)
    after = wait_events_above(browser, before, PAGE_WAIT_S)

    assert after is not None and after > before
    assert browser.evaluate(EPOCH_JS) > first_epoch
    assert browser.evaluate("window.revetlTestMarker") == "no reload"
    for stage in ("debezium", "clickhouse", "worker"):
        assert browser.evaluate(f"!!document.querySelector('[data-stage={stage}]')")
    assert browser.evaluate("document.getElementById('freshness').dataset.value")
    assert browser.evaluate("document.querySelectorAll('#chart-freshness path').length")
    assert browser.errors == []

    path = browser.screenshot(tmp_path / "monitor-page.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOT_COPY)
    with capsys.disabled():
        print(f"\nmonitor page screenshot: {path} (copy: {SCREENSHOT_COPY})")
