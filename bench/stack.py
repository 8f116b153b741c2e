"""Benchmark the native stack: `revetl up` time, idle memory, insert-to-Kafka latency.

Run with `make bench` while nothing else loads the machine. It restarts the stack
(down, then up) to time a start with the jars already cached.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Consumer
from report import write_result

from connectors import debezium
from services.config import load_settings
from services.kafka import ensure_topics
from services.stack import Stack, status

BENCH_WRITE = (
    "INSERT INTO public.revetl_heartbeat (id, beat_at) VALUES (%s, now()) "
    "ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at"
)


def timed_restart() -> float:
    revetl = [sys.executable, "-m", "services.cli"]
    subprocess.run([*revetl, "down"], check=True, capture_output=True)
    began = time.monotonic()
    result = subprocess.run([*revetl, "up"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"revetl up failed:\n{result.stdout}\n{result.stderr}")
    return time.monotonic() - began


def group_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (Postgres forks backends)."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split()
            fields = (entry / "status").read_text()
        except OSError:
            continue
        if int(entry.name) != pid and int(stat[3]) != pid:
            continue
        for line in fields.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def insert_to_event_latency(stack: Stack, count: int) -> list[float]:
    """Seconds from a committed source write to its Debezium event read from Kafka.

    Writes go to the heartbeat table, which the pipeline's own connector captures
    and nothing downstream reads, so the measurement leaves users and sales alone.
    """
    topic = debezium.topic_for(debezium.HEARTBEAT_TABLE)
    ensure_topics(stack.kafka.bootstrap, [topic])
    consumer = Consumer({
        "bootstrap.servers": stack.kafka.bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "latest",
        "fetch.wait.max.ms": 10,
    })  # fmt: skip
    consumer.subscribe([topic])
    latencies = []
    try:
        while not consumer.assignment():
            consumer.poll(0.2)
        with psycopg.connect(stack.source_pg.dsn(), autocommit=True) as conn:
            for i in range(count):
                began = time.monotonic()
                conn.execute(BENCH_WRITE, (1000 + i % 10,))
                _wait_event(consumer, topic, began)
                latencies.append(time.monotonic() - began)
            conn.execute("DELETE FROM public.revetl_heartbeat WHERE id >= 1000")
    finally:
        consumer.close()
    return latencies


def _wait_event(consumer: Consumer, topic: str, began: float) -> None:
    while time.monotonic() - began < 60:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            return
    raise SystemExit(f"no event on {topic} within 60 s: is the connector running?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inserts", type=int, default=100)
    args = parser.parse_args()
    stack = Stack.from_settings(load_settings())

    up_s = timed_restart()
    time.sleep(10)  # let the JVMs settle before reading idle memory
    memory = {
        row.name: round(group_rss_mib(row.pid), 1)
        for row in status(stack)
        if row.pid is not None
    }
    latencies = insert_to_event_latency(stack, args.inserts)
    quantiles = statistics.quantiles(latencies, n=100)
    result = {
        "up_seconds_jars_cached": round(up_s, 1),
        "idle_rss_mib": memory,
        "insert_to_kafka_ms": {
            "count": len(latencies),
            "p50": round(statistics.median(latencies) * 1000, 1),
            "p95": round(quantiles[94] * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
        },
    }
    write_result("stack", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
