"""The LTV relay's pure parts: body lines, producer settings, failure messages."""

from __future__ import annotations

from services.config import Settings
from services.relay_server import NOT_DELIVERED, messages_of, producer_config


def test_every_non_blank_line_is_one_message_in_order() -> None:
    body = b'{"user_id":1}\n{"user_id":2}\n\n  \n{"user_id":3}\n'

    assert messages_of(body) == [b'{"user_id":1}', b'{"user_id":2}', b'{"user_id":3}']


def test_an_empty_block_is_no_message() -> None:
    assert messages_of(b"") == []
    assert messages_of(b"\n") == []


def test_the_producer_keeps_order_and_gives_up_with_the_delivery_timeout() -> None:
    settings = Settings(relay_delivery_timeout_s=2.5)

    config = producer_config(settings, "127.0.0.1:19092")

    assert config["bootstrap.servers"] == "127.0.0.1:19092"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["message.timeout.ms"] == 2500
    assert config["linger.ms"] <= 5


def test_the_failure_message_says_what_happens_next() -> None:
    text = NOT_DELIVERED.format(
        missing=3, total=5, bootstrap="b:1", timeout_s=10.0, reason="flush timed out"
    )

    assert text.startswith("3 of 5 LTV messages not acknowledged by Kafka b:1")
    assert "ClickHouse will send the block again" in text
