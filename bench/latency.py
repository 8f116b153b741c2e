"""End-to-end latency: a sale committed in the source to its user's row in the target.

Inserts sales at a steady rate for a while, spread over a set of bench users, and
times each one from the moment its source transaction committed (as the client
sees it) to the moment the product DB commits the user's new LTV (a NOTIFY from
a trigger this script adds to user_ltv_history for the run, delivered at commit).
Run it with the stack up: `make bench-latency RATE=1000 DURATION=30`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import defaultdict, deque

import psycopg
from report import write_result
from rich.progress import Progress

from services.config import load_settings
from services.stack import Stack

CHANNEL = "revetl_bench"
TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION public.revetl_bench_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('revetl_bench', NEW.user_id || ':' || NEW.ltv);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER revetl_bench_notify
    AFTER INSERT OR UPDATE ON public.user_ltv_history
    FOR EACH ROW EXECUTE FUNCTION public.revetl_bench_notify();
"""
DROP_TRIGGER_SQL = """
DROP TRIGGER IF EXISTS revetl_bench_notify ON public.user_ltv_history;
DROP FUNCTION IF EXISTS public.revetl_bench_notify();
"""
BENCH_USER_BASE = 9_000_000_000
"""Bench users and sales get ids from here up, apart from seeded and demo rows."""


class Tracker:
    """Sales waiting for the target, per user, resolved by the target's NOTIFYs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, deque[tuple[int, float]]] = defaultdict(deque)
        self.latencies: list[float] = []

    def sent(self, user_id: int, ltv: int, committed_at: float) -> None:
        with self.lock:
            self.pending[user_id].append((ltv, committed_at))

    def applied(self, user_id: int, ltv: int, seen_at: float) -> None:
        with self.lock:
            queue = self.pending.get(user_id)
            while queue and queue[0][0] <= ltv:
                self.latencies.append(seen_at - queue.popleft()[1])

    def waiting(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.pending.values())


def listen(dsn: str, tracker: Tracker, stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        while not stop.is_set():
            for note in conn.notifies(timeout=0.2):
                user, _, ltv = note.payload.partition(":")
                tracker.applied(int(user), int(ltv), time.time())


def create_users(
    source: psycopg.Connection[tuple[object, ...]], count: int
) -> list[int]:
    ids = [BENCH_USER_BASE + i for i in range(count)]
    with source.cursor() as cur:
        cur.execute(
            "DELETE FROM public.sales WHERE id >= %s OR user_id >= %s",
            (BENCH_USER_BASE, BENCH_USER_BASE),
        )
        cur.execute("DELETE FROM public.users WHERE id >= %s", (BENCH_USER_BASE,))
        cur.executemany(
            "INSERT INTO public.users (id, first_name, email) VALUES (%s, 'Bench', %s)",
            [(i, f"bench{i}@example.test") for i in ids],
        )
    source.commit()
    return ids


def run(stack: Stack, rate: int, seconds: float, users: int, tick_s: float) -> dict:
    tracker, stop = Tracker(), threading.Event()
    with psycopg.connect(stack.target_pg.dsn(), autocommit=True) as target:
        target.execute(TRIGGER_SQL)
    listener = threading.Thread(
        target=listen, args=(stack.target_pg.dsn(), tracker, stop), daemon=True
    )
    listener.start()
    try:
        with psycopg.connect(stack.source_pg.dsn()) as source:
            ids = create_users(source, users)
            time.sleep(3)  # let the users' own events reach the target first
            sent, began = _insert_at_rate(source, ids, tracker, rate, seconds, tick_s)
        elapsed = time.monotonic() - began
        deadline = time.monotonic() + 60
        while tracker.waiting() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        listener.join()
        with psycopg.connect(stack.target_pg.dsn(), autocommit=True) as target:
            target.execute(DROP_TRIGGER_SQL)
    return _summary(tracker, rate, seconds, sent, elapsed)


def _insert_at_rate(
    source: psycopg.Connection[tuple[object, ...]],
    ids: list[int],
    tracker: Tracker,
    rate: int,
    seconds: float,
    tick_s: float,
) -> tuple[int, float]:
    ltv: dict[int, int] = dict.fromkeys(ids, 0)
    sent, began = 0, time.monotonic()
    with Progress() as progress:
        task = progress.add_task(f"sales at {rate}/s", total=int(rate * seconds))
        while (now := time.monotonic()) - began < seconds:
            due = int((now - began) * rate) - sent
            if due > 0:
                batch = []
                for k in range(due):
                    user = ids[(sent + k) % len(ids)]
                    amount = 1_000 + (sent + k) % 99_000
                    ltv[user] += amount
                    batch.append((user, amount, ltv[user]))
                with source.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO public.sales (id, user_id, branch, amount) "
                        "VALUES (%s, %s, 1, %s)",
                        [(BENCH_USER_BASE + sent + k, u, a)
                         for k, (u, a, _) in enumerate(batch)],
                    )  # fmt: skip
                source.commit()
                committed_at = time.time()
                for user, _, total in batch:
                    tracker.sent(user, total, committed_at)
                sent += due
                progress.update(task, completed=sent)
            time.sleep(tick_s)
    return sent, began


def _summary(
    tracker: Tracker, rate: int, seconds: float, sent: int, elapsed: float
) -> dict:
    lat = sorted(tracker.latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {
        "target_rate": rate,
        "seconds": seconds,
        "sales_sent": sent,
        "achieved_rate": round(sent / elapsed, 1),
        "applied": len(lat),
        "not_applied_after_60s": tracker.waiting(),
        "latency_ms": {
            "p50": round(statistics.median(lat) * 1000, 1) if lat else None,
            "p95": round(q[94] * 1000, 1),
            "p99": round(q[98] * 1000, 1),
            "max": round(lat[-1] * 1000, 1) if lat else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=100, help="sales per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=1000, help="bench users")
    parser.add_argument(
        "--tick-ms",
        type=float,
        default=10.0,
        help="the inserter commits what is due every tick",
    )
    args = parser.parse_args()
    stack = Stack.from_settings(load_settings())
    result = run(stack, args.rate, args.seconds, args.users, args.tick_ms / 1000)
    write_result(f"latency-{args.rate}", result)
    return 0 if result["not_applied_after_60s"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
