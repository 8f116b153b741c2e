"""Benchmark the native stack: `revetl up` time, idle memory, insert-to-Kafka latency.

Run with `make bench` while nothing else loads the machine. It restarts the stack
(down, then up) to time a start with the jars already cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Consumer
from psycopg import sql

from services.config import load_settings
from services.connect import DEBEZIUM_POSTGRES
from services.stack import Stack, status

RESULTS = Path(__file__).parent / "results"


def timed_restart() -> float:
    subprocess.run(
        [sys.executable, "-m", "services.cli", "down"], check=True, capture_output=True
    )
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "services.cli", "up"], check=True, capture_output=True
    )
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
    """Seconds from a committed insert to its Debezium event read from Kafka."""
    suffix = uuid.uuid4().hex[:8]
    table, name = f"bench_{suffix}", f"bench-{suffix}"
    with psycopg.connect(stack.source_pg.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id BIGINT PRIMARY KEY)").format(
                sql.Identifier(table)
            )
        )
        settings = stack.settings
        stack.connect.request(
            "PUT",
            f"/connectors/{name}/config",
            {
                "connector.class": DEBEZIUM_POSTGRES,
                "plugin.name": "pgoutput",
                "database.hostname": settings.bind_host,
                "database.port": str(settings.source_pg_port),
                "database.user": settings.pg_user,
                "database.password": settings.pg_password.get_secret_value(),
                "database.dbname": settings.source_pg_database,
                "topic.prefix": f"bench{suffix}",
                "table.include.list": f"public.{table}",
                "slot.name": f"bench_{suffix}",
                "slot.drop.on.stop": "true",
                "publication.name": f"bench_{suffix}",
                "publication.autocreate.mode": "filtered",
                "snapshot.mode": "no_data",
                "poll.interval.ms": "20",
            },
        )
        consumer = Consumer(
            {
                "bootstrap.servers": stack.kafka.bootstrap,
                "group.id": name,
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 200,
            }
        )
        consumer.subscribe([f"bench{suffix}.public.{table}"])
        try:
            # The first event creates the topic; it is not timed.
            latencies = []
            for i in range(count + 1):
                began = time.monotonic()
                conn.execute(
                    sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(table)),
                    (i,),
                )
                while True:
                    msg = consumer.poll(1.0)
                    if msg is not None and msg.error() is None:
                        break
                if i > 0:
                    latencies.append(time.monotonic() - began)
        finally:
            consumer.close()
            stack.connect.request("DELETE", f"/connectors/{name}")
            time.sleep(2)
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return latencies


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
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stack-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
