"""The LTV relay against a real Kafka, and the pipeline across a relay outage."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition
from pipeline_support import Pipeline

from services.config import Settings, load_settings
from services.kafka import ensure_topics
from services.relay_server import Relay, RelayHTTPServer
from services.stack import Stack

START_TIMEOUT_S = 120.0
READ_TIMEOUT_S = 30.0


class RunningRelay:
    """A relay in this process on a free port, producing to its own topic."""

    def __init__(self, settings: Settings) -> None:
        self.relay = Relay(settings)
        self.server = RelayHTTPServer(("127.0.0.1", 0), self.relay)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def post(
        self, body: bytes, path: str = "/ltv", chunked: bool = False
    ) -> tuple[int, str]:
        """POST body as it is, or in two chunks as ClickHouse's URL engine does."""
        if not chunked:
            return self.send(path, body, {"Content-Length": str(len(body))})
        half = len(body) // 2
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:])
        )
        return self.send(path, framed + b"0\r\n\r\n", {"Transfer-Encoding": "chunked"})

    def send(self, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest("POST", path)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            conn.send(raw)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def health(self) -> dict[str, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            return dict(json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.relay.close()


@pytest.fixture
def relay(stack: Stack, unique: str) -> Iterator[RunningRelay]:
    topic = f"test.relay.{unique}"
    ensure_topics(stack.kafka.bootstrap, [topic])
    settings = load_settings(ltv_topic=topic, relay_delivery_timeout_s=20)
    running = RunningRelay(settings)
    yield running
    running.close()


def read_topic(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(bytes(message.value() or b""))
    finally:
        consumer.close()
    return values


def test_a_block_lands_on_the_topic_in_order_before_the_answer(
    stack: Stack, relay: RunningRelay
) -> None:
    lines = [json.dumps({"user_id": i, "ltv": i * 10}).encode() for i in range(50)]

    status, _ = relay.post(b"\n".join(lines) + b"\n", chunked=True)
    second, _ = relay.post(b'{"user_id":50,"ltv":500}\n')

    assert (status, second) == (200, 200)
    assert read_topic(stack.kafka.bootstrap, relay.relay.topic, 51) == [
        *lines,
        b'{"user_id":50,"ltv":500}',
    ]
    health = relay.health()
    assert (health["requests"], health["messages"], health["failures"]) == (2, 51, 0)


def test_unknown_paths_and_bad_bodies_are_refused(relay: RunningRelay) -> None:
    assert relay.post(b"{}", path="/other")[0] == 404
    status, text = relay.send("/ltv", b"zz\r\n{}", {"Transfer-Encoding": "chunked"})
    assert status == 400
    assert "chunk size" in text
    assert relay.health()["messages"] == 0


def test_kafka_out_of_reach_answers_503_with_the_reason() -> None:
    settings = load_settings(
        kafka_bootstrap="127.0.0.1:1",
        ltv_topic="test.relay.unreachable",
        relay_delivery_timeout_s=3.0,
    )
    running = RunningRelay(settings)
    answers: list[tuple[int, str]] = []
    post = threading.Thread(
        target=lambda: answers.append(running.post(b'{"user_id":1}\n{"user_id":2}\n'))
    )
    try:
        post.start()
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline and running.relay.lock.acquire(False):
            running.relay.lock.release()  # not yet taken by the post
            time.sleep(0.01)
        during = running.health()
        still_waiting = post.is_alive()
        post.join(timeout=60)
        after = running.health()
    finally:
        running.close()

    assert still_waiting and during["requests"] == 0  # /healthz did not wait
    [(status, text)] = answers
    assert status == 503
    assert "not acknowledged by Kafka 127.0.0.1:1" in text
    assert "ClickHouse will send the block again" in text
    assert after["failures"] == 1
    assert after["messages"] == 0
    assert "127.0.0.1:1" in str(after["last_error"])


@pytest.fixture
def pipeline(stack: Stack) -> Iterator[Pipeline]:
    p = Pipeline(stack)
    yield p
    p.close()


@pytest.mark.faults
def test_a_change_made_while_the_relay_is_down_arrives_once_it_is_back(
    stack: Stack, pipeline: Pipeline
) -> None:
    user = pipeline.add_user()
    pipeline.add_sale(user, 1_500_000)
    assert pipeline.wait_rank(user, 1_500_000) is not None

    stack.relay.stop()
    try:
        pipeline.add_sale(user, 4_000_000)
        time.sleep(5)  # several blocks' worth: ClickHouse tries and fails
        held_back = pipeline.rank(user)
        clickhouse_ltv = pipeline.clickhouse_ltv(user)
    finally:
        stack.relay.start()
        stack.relay.wait_healthy(START_TIMEOUT_S)
    arrived = pipeline.wait_rank(user, 5_500_000)

    assert held_back is not None and held_back[0] == 1_500_000
    assert clickhouse_ltv in (1_500_000, 5_500_000)  # state may be ahead of the sink
    assert arrived is not None and arrived[:2] == (5_500_000, "C")
    report = pipeline.reconcile()
    assert report.agrees, (report.summary(), report.differences[:5])
