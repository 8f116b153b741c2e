"""`python -m services.relay_server`: ClickHouse's LTV changes onto the LTV topic.

ClickHouse's materialized view POSTs every block of LTV changes here as
JSONEachRow (a URL-engine table, `connectors/clickhouse/relay_sink.sql`). Each
line becomes one message on the LTV topic, in order, and the request is answered
200 only once Kafka has acknowledged every message of it. Any failure answers
503, which fails ClickHouse's insert: the Kafka engine then does not commit the
block's offsets and reads it again, so a change is never lost, only sent twice.

Why not ClickHouse's own Kafka sink: it creates and destroys a librdkafka
producer for every insert, and the destroy waits out internal one-second timers,
so each block of LTV changes took 20 ms, 1 s or 2 s to leave ClickHouse. This
process keeps one producer for its whole life.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import KafkaError, Message, Producer

from services.config import Settings
from services.entrypoint import run_server
from services.errors import ConfigurationError, RetriableError
from services.http_server import BadBody, LocalHTTPServer, read_chunked
from services.kafka import KafkaBroker

log = logging.getLogger(__name__)

LTV_PATH = "/ltv"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 256 * 1024 * 1024
"""One block of LTV changes is at most ~65,536 users of ~120 bytes; far below."""
KEEP_ALIVE_S = 30

CANNOT_LISTEN = (
    "the LTV relay cannot listen on {host}:{port} ({reason}); free the port or "
    "move it with REVETL_RELAY_PORT"
)
NOT_DELIVERED = (
    "{missing} of {total} LTV messages not acknowledged by Kafka {bootstrap} within "
    "{timeout_s:.0f} s ({reason}); ClickHouse will send the block again"
)


class DeliveryError(RetriableError):
    """Kafka did not take every message of a request; ClickHouse sends it again."""


@dataclass
class RelayCounters:
    """What /healthz reports; read and changed only under Relay.counters_lock."""

    requests: int = 0
    messages: int = 0
    failures: int = 0
    last_error: str = ""
    last_error_time: float | None = None
    started: float = field(default_factory=time.time)


class Relay:
    """One producer; one request at a time, so the topic keeps the blocks' order.

    The counters have a lock of their own, so /healthz answers at once even while
    a block waits for a broker that is down.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.ltv_topic
        self.bootstrap = KafkaBroker(settings).bootstrap
        self.timeout_s = settings.relay_delivery_timeout_s
        self.config = producer_config(settings, self.bootstrap)
        self.producer = Producer(self.config)
        self.lock = threading.Lock()
        self.counters = RelayCounters()
        self.counters_lock = threading.Lock()

    def forward(self, body: bytes) -> int:
        """Produce each line of body and wait for Kafka; the message count."""
        lines = messages_of(body)
        with self.lock:
            try:
                self._deliver(lines)
            except DeliveryError as exc:
                self._count(0, str(exc))
                raise
            self._count(len(lines), "")
        return len(lines)

    def _count(self, messages: int, error: str) -> None:
        with self.counters_lock:
            c = self.counters
            c.requests += 1
            c.messages += messages
            if error:
                c.failures += 1
                c.last_error, c.last_error_time = error, time.time()

    def _deliver(self, lines: list[bytes]) -> None:
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)

        try:
            for line in lines:
                self._produce(line, on_delivery)
        except BufferError as exc:
            self._fail(len(lines), len(lines), f"local queue full: {exc}")
        missing = self.producer.flush(self.timeout_s)
        if any(err.fatal() for err in errors):
            # An idempotent producer refuses everything after a fatal error.
            log.warning("kafka producer failed for good, starting a new one")
            self.producer = Producer(self.config)
        if missing or errors:
            reason = str(errors[0]) if errors else "flush timed out"
            self._fail(missing + len(errors), len(lines), reason)

    def _produce(self, line: bytes, on_delivery: Any) -> None:
        self.producer.produce(self.topic, value=line, on_delivery=on_delivery)
        self.producer.poll(0)

    def _fail(self, missing: int, total: int, reason: str) -> None:
        message = NOT_DELIVERED.format(
            missing=missing,
            total=total,
            bootstrap=self.bootstrap,
            timeout_s=self.timeout_s,
            reason=reason,
        )
        raise DeliveryError(message)

    def health(self) -> dict[str, Any]:
        with self.counters_lock:
            c = self.counters
            return {
                "time": time.time(),
                "topic": self.topic,
                "bootstrap": self.bootstrap,
                "requests": c.requests,
                "messages": c.messages,
                "failures": c.failures,
                "last_error": c.last_error,
                "last_error_time": c.last_error_time,
                "started": c.started,
            }

    def close(self) -> None:
        with self.lock:
            left = self.producer.flush(self.timeout_s)
        if left:
            # Only blocks already answered 503 leave messages behind, and
            # ClickHouse sends those again: dropping them loses nothing.
            log.warning("stopping with %d LTV messages not acknowledged", left)
            self.producer.purge()
            self.producer.flush(0)


def producer_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """librdkafka settings: idempotent so retries keep order, no batching delay."""
    timeout_ms = int(settings.relay_delivery_timeout_s * 1000)
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "revetl-relay",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "message.timeout.ms": timeout_ms,
        "socket.nagle.disable": True,
        "logger": log,  # librdkafka's own lines into this log, not raw stderr
    }


def messages_of(body: bytes) -> list[bytes]:
    """One message per non-blank line of a JSONEachRow body."""
    return [line for line in body.split(b"\n") if line.strip()]


class RelayHTTPServer(LocalHTTPServer):
    def __init__(self, address: tuple[str, int], relay: Relay) -> None:
        self.relay = relay
        super().__init__(address, RelayHandler)


class RelayHandler(BaseHTTPRequestHandler):
    """POST /ltv relays a block; GET /healthz tells the counters."""

    protocol_version = "HTTP/1.1"
    server_version = "revetl-relay"
    timeout = KEEP_ALIVE_S
    server: RelayHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)

    def do_GET(self) -> None:
        if urlsplit(self.path).path != HEALTH_PATH:
            self._reply(404, f"GET {HEALTH_PATH} or POST {LTV_PATH}\n")
            return
        body = json.dumps(self.server.relay.health())
        self._reply(200, body, "application/json")

    def do_POST(self) -> None:
        if urlsplit(self.path).path != LTV_PATH:
            self._reply(404, f"POST the LTV changes to {LTV_PATH}\n")
            return
        started = time.monotonic()
        try:
            count = self.server.relay.forward(self._read_body())
        except BadBody as exc:
            self.close_connection = True
            self._reply(400, f"{exc}\n")
            return
        except DeliveryError as exc:
            log.warning("block not relayed: %s", exc)
            self._reply(503, f"{exc}\n")
            return
        self._reply(200, "")
        log.debug(
            "relayed messages=%d ms=%.1f", count, (time.monotonic() - started) * 1000
        )

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return read_chunked(self.rfile)
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            raise BadBody(f"Bad Content-Length {length!r}.")
        return self.rfile.read(int(length))

    def _reply(self, status: int, text: str, content_type: str = "text/plain") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def bind(settings: Settings, relay: Relay) -> RelayHTTPServer:
    host, port = settings.bind_host, settings.relay_port
    try:
        return RelayHTTPServer((host, port), relay)
    except OSError as exc:
        message = CANNOT_LISTEN.format(host=host, port=port, reason=exc.strerror)
        raise ConfigurationError(message) from exc


def serve(settings: Settings) -> None:
    """Relay until SIGTERM or Ctrl-C, then deliver what is still queued."""
    relay = Relay(settings)
    server = bind(settings, relay)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    log.info(
        "ready url=http://%s:%d%s topic=%s bootstrap=%s",
        settings.bind_host, server.server_port, LTV_PATH, relay.topic,
        relay.bootstrap,
    )  # fmt: skip
    try:
        server.serve_forever()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
        relay.close()
        log.info("stopped messages=%d", relay.counters.messages)


def main(argv: Sequence[str] | None = None) -> int:
    description = (
        "Put the LTV changes ClickHouse POSTs onto the LTV topic. Settings come "
        "from REVETL_* variables."
    )
    return run_server("relay", description, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
