"""`python -m services.monitor_server`: the monitor's collection loop and HTTP server.

A background thread collects a snapshot every `REVETL_MONITOR_INTERVAL_S` and
publishes it, already rendered, by replacing one reference; request handlers only
read that reference, so they never wait for a collection and share no lock.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from services.config import Settings
from services.entrypoint import run_server
from services.errors import ConfigurationError
from services.monitor_collect import Collector
from services.monitor_state import Snapshot, render_metrics, state_json
from services.stack import Stack

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent / "monitor_page"
"""The live page's files (index.html and what it loads), served as they are."""

MISSING_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>revetl monitor</title></head>
<body>
<h1>revetl monitor</h1>
<p>The live page is missing: services/monitor_page/index.html was not found.</p>
<p>The data is here: <a href="/metrics">/metrics</a> (Prometheus) and
<a href="/api/state">/api/state</a> (JSON).</p>
</body></html>
"""


@dataclass(frozen=True)
class Published:
    """One snapshot with its two renderings, swapped in as a whole."""

    snapshot: Snapshot
    metrics: bytes
    state: bytes

    @classmethod
    def of(cls, snapshot: Snapshot) -> Published:
        state = json.dumps(state_json(snapshot)).encode()
        return cls(snapshot, render_metrics(snapshot), state)


class CollectLoop(threading.Thread):
    """Collects every interval until stopped; `published` is the latest result."""

    def __init__(self, collector: Collector, interval_s: float) -> None:
        super().__init__(name="collect", daemon=True)
        self.collector = collector
        self.interval_s = interval_s
        self.stopping = threading.Event()
        waiting = Snapshot(
            time=time.time(),
            names=collector.names,
            errors=("the first collection has not finished yet",),
        )
        self.published = Published.of(waiting)

    def run(self) -> None:
        collections = 0
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                self.published = Published.of(self.collector.collect())
            except Exception:  # a bug in one round must not end the monitor
                log.exception("collection failed; trying again next interval")
            collections += 1
            if collections == 1:
                log.info(
                    "first collection seconds=%.2f errors=%d",
                    time.monotonic() - began,
                    len(self.published.snapshot.errors),
                )
            self.stopping.wait(max(0.0, self.interval_s - (time.monotonic() - began)))
        self.collector.close()


class MonitorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], loop: CollectLoop, page_dir: Path = PAGE_DIR
    ) -> None:
        super().__init__(address, MonitorHandler)
        self.loop = loop
        self.page_dir = page_dir


class MonitorHandler(BaseHTTPRequestHandler):
    server: MonitorHTTPServer
    server_version = "revetl-monitor"

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        published = self.server.loop.published
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, published.metrics)
        elif path == "/api/state":
            self._send(200, "application/json", published.state)
        elif path == "/healthz":
            self._send(200, "application/json", health(published.snapshot))
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        found = page_file(self.server.page_dir, path)
        if found is not None:
            kind = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
            self._send(200, kind, found.read_bytes())
        elif path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", MISSING_PAGE)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)


def page_file(page_dir: Path, url_path: str) -> Path | None:
    """The file a URL path names inside the page directory; None outside it."""
    relative = url_path.lstrip("/") or "index.html"
    root = page_dir.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def health(snapshot: Snapshot) -> bytes:
    """The /healthz body: when the snapshot was taken and how many sources failed."""
    body = {"time": snapshot.time, "errors": len(snapshot.errors)}
    return json.dumps(body).encode()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    """Collect and serve until SIGTERM or Ctrl-C."""
    collector = Collector(Stack.from_settings(settings))
    loop = CollectLoop(collector, settings.monitor_interval_s)
    address = (settings.bind_host, settings.monitor_port)
    try:
        server = MonitorHTTPServer(address, loop)
    except OSError as exc:
        message = (
            f"the monitor cannot listen on {address[0]}:{address[1]} ({exc}); free "
            "the port or move it with REVETL_MONITOR_PORT"
        )
        raise ConfigurationError(message) from exc
    loop.start()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    log.info(
        "ready url=http://%s:%d/ interval_s=%s",
        address[0],
        address[1],
        settings.monitor_interval_s,
    )
    try:
        server.serve_forever()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
        loop.stopping.set()
        loop.join(timeout=30)
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    description = (
        "Serve the pipeline's lag, freshness and health: /metrics, /api/state and "
        "the live page. Settings come from REVETL_* variables."
    )
    return run_server("monitor", description, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
