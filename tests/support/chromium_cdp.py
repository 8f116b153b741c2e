"""Headless Chromium driven over the DevTools protocol, for tests of web pages."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

CHROMIUM = "chromium"
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 60.0
# Without the background-networking flags Chromium keeps trying to reach Google's
# services, which a closed network turns into long stalls.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools call failed."""


def chromium_path() -> str | None:
    return shutil.which(CHROMIUM)


class Chromium:
    """One headless Chromium with a fresh profile and one page, used synchronously.

    The DevTools websocket runs on an event loop in a background thread; every
    public method blocks until its answer arrives.
    """

    def __init__(self, work_dir: Path, width: int = 1440, height: int = 1000) -> None:
        self.work_dir = work_dir
        self.width = width
        self.height = height
        self.errors: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded = threading.Event()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def log_file(self) -> Path:
        return self.work_dir / "chromium.log"

    def start(self) -> None:
        executable = chromium_path()
        if executable is None:
            raise BrowserError("no chromium on PATH; install Debian's `chromium`")
        profile = self.work_dir / "profile"
        profile.mkdir(parents=True)
        with self.log_file.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    executable,
                    *FLAGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={self.width},{self.height}",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port = self._wait_port(profile / "DevToolsActivePort")
        self._thread.start()
        self._run(self._connect(self._page_ws_url(port)))
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def stop(self) -> None:
        if self._thread.is_alive():
            self._run(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(15)

    def _wait_port(self, port_file: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            lines = port_file.read_text().split() if port_file.exists() else []
            if lines:
                return int(lines[0])
            time.sleep(0.1)
        tail = self.log_file.read_text(errors="replace")[-2000:]
        raise BrowserError(f"chromium did not open its DevTools port; log:\n{tail}")

    def _page_ws_url(self, port: int) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/json/list", timeout=10
        ) as r:
            targets = json.load(r)
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise BrowserError(f"chromium has no page target: {targets!r}")
        return str(pages[0]["webSocketDebuggerUrl"])

    def _run(self, coro: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(CALL_TIMEOUT_S + 5)

    async def _connect(self, url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)
        self._loop.create_task(self._read())

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None:
                future.set_result(data)
            else:
                self._on_event(data.get("method", ""), data.get("params", {}))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get(
                "text", ""
            )
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in
                            params.get("args", []))  # fmt: skip
            self.errors.append(f"console.error: {args}")

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending[call_id] = future
        await self._ws.send_str(
            json.dumps({"id": call_id, "method": method, "params": params})
        )
        return await asyncio.wait_for(future, CALL_TIMEOUT_S)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; returns its result or raises its error."""
        answer: dict[str, Any] = self._run(self._call(method, params))
        if "error" in answer:
            raise BrowserError(f"{method} failed: {answer['error']}")
        return dict(answer.get("result", {}))

    def navigate(self, url: str, timeout_s: float = 30.0) -> None:
        self._loaded.clear()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        if not self._loaded.wait(timeout_s):
            raise BrowserError(f"{url} did not finish loading in {timeout_s:.0f} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float) -> Any:
        """Poll a JavaScript expression until it is truthy; return its last value."""
        deadline = time.monotonic() + timeout_s
        value = self.evaluate(expression)
        while not value and time.monotonic() < deadline:
            time.sleep(0.25)
            value = self.evaluate(expression)
        return value

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page, however tall, written to path."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": self.width,
            "height": max(int(size["height"]), self.height),
            "scale": 1,
        }
        shot = self.call(
            "Page.captureScreenshot",
            format="png",
            clip=clip,
            captureBeyondViewport=True,
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
