"""The monitor's HTTP side: what each path serves, from the published snapshot."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.config import load_settings
from services.monitor_collect import Collector
from services.monitor_server import (
    CollectLoop,
    MonitorHTTPServer,
    Published,
    page_file,
)
from services.monitor_state import PipelineNames, Snapshot
from services.stack import Stack

NAMES = PipelineNames("ch", "worker", "revetl-source", "revetl")
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CollectLoop:
    """A collection loop that is never started: tests publish snapshots by hand."""
    monkeypatch.setenv("REVETL_STATE_DIR", str(tmp_path / "state"))
    return CollectLoop(Collector(Stack.from_settings(load_settings())), 2.0)


@pytest.fixture
def page_dir(tmp_path: Path) -> Path:
    page = tmp_path / "page"
    page.mkdir()
    (tmp_path / "secret.txt").write_text("outside the page")
    return page


@pytest.fixture
def base_url(loop: CollectLoop, page_dir: Path) -> Iterator[str]:
    server = MonitorHTTPServer(("127.0.0.1", 0), loop, page_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with _http.open(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_before_the_first_collection_the_state_says_so(base_url: str) -> None:
    status, kind, body = get(base_url + "/api/state")

    assert status == 200 and kind == "application/json"
    state = json.loads(body)
    assert state["freshness_seconds"] is None
    assert state["errors"] == ["the first collection has not finished yet"]


def test_handlers_serve_the_latest_published_snapshot(
    base_url: str, loop: CollectLoop
) -> None:
    loop.published = Published.of(
        Snapshot(time=42.0, names=NAMES, freshness_seconds=3.5)
    )

    _, _, state = get(base_url + "/api/state")
    status, kind, metrics = get(base_url + "/metrics")
    _, _, health = get(base_url + "/healthz")

    assert json.loads(state)["freshness_seconds"] == 3.5
    assert status == 200 and kind.startswith("text/plain")
    assert b"revetl_freshness_seconds 3.5" in metrics
    assert json.loads(health) == {"time": 42.0, "errors": 0}


def test_without_the_page_the_root_says_it_is_missing(base_url: str) -> None:
    status, kind, body = get(base_url + "/")

    assert status == 200 and kind.startswith("text/html")
    assert b"page is missing" in body
    assert get(base_url + "/app.js")[0] == 404


def test_page_files_are_served_with_their_type(base_url: str, page_dir: Path) -> None:
    (page_dir / "index.html").write_text("<h1>live</h1>")
    (page_dir / "app.js").write_text("let x = 1;")

    root = get(base_url + "/")
    script = get(base_url + "/app.js")

    assert root[0] == 200 and root[2] == b"<h1>live</h1>"
    assert script[0] == 200 and "javascript" in script[1]


def test_paths_outside_the_page_directory_are_refused(
    base_url: str, page_dir: Path
) -> None:
    (page_dir / "index.html").write_text("x")

    assert page_file(page_dir, "/") == (page_dir / "index.html").resolve()
    assert page_file(page_dir, "/../secret.txt") is None
    assert page_file(page_dir, "/missing.css") is None
    assert get(base_url + "/..%2fsecret.txt")[0] == 404
