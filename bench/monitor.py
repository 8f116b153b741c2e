"""The monitor's own cost: CPU and memory of its process at idle and under load.

Samples the monitor process (user + system CPU time and resident memory, from
/proc) once a second, first while the pipeline idles, then while bench/latency.py
inserts sales at the given rate, and also records how long each collection took
(`revetl_monitor_collect_seconds`). Run it with the stack up:
`.venv/bin/python bench/monitor.py --rate 1000 --seconds 60`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import latency  # bench/latency.py: the same load generator as the latency bench
from report import write_result

from services.config import load_settings
from services.stack import Stack

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
COLLECT_METRIC = "revetl_monitor_collect_seconds "
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Samples:
    """Once a second: CPU seconds used so far, resident MiB, last collection time."""

    times: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    collect_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        elapsed = self.times[-1] - self.times[0]
        used = self.cpu_s[-1] - self.cpu_s[0]
        return {
            "seconds": round(elapsed, 1),
            "cpu_percent_of_one_core": round(100 * used / elapsed, 2),
            "rss_mib_mean": round(statistics.mean(self.rss_mib), 1),
            "rss_mib_max": round(max(self.rss_mib), 1),
            "collect_seconds_median": round(statistics.median(self.collect_s), 3),
            "collect_seconds_max": round(max(self.collect_s), 3),
        }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def collect_seconds(url: str) -> float:
    with _http.open(url + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(COLLECT_METRIC):
                return float(line.split()[1])
    return float("nan")


def sample_until(pid: int, url: str, stop: threading.Event) -> Samples:
    samples = Samples()
    while True:
        samples.times.append(time.monotonic())
        samples.cpu_s.append(cpu_seconds(pid))
        samples.rss_mib.append(rss_mib(pid))
        samples.collect_s.append(collect_seconds(url))
        if stop.wait(1.0):
            return samples


def measure_idle(pid: int, url: str, seconds: float) -> Samples:
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return sample_until(pid, url, stop)


def measure_load(
    stack: Stack, pid: int, url: str, rate: int, seconds: float
) -> tuple[Samples, dict[str, object]]:
    """Sample for the whole run of the latency bench: its users' setup, the
    sales at the rate, and the wait until every sale was applied."""
    stop = threading.Event()
    result: dict[str, Samples] = {}

    def sample() -> None:
        result["samples"] = sample_until(pid, url, stop)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        load = latency.run(stack, rate, seconds, users=1000, tick_s=0.01)
    finally:
        stop.set()
        sampler.join()
    return result["samples"], load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=1000, help="sales per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration")
    parser.add_argument("--idle", type=float, default=60.0, help="idle duration")
    args = parser.parse_args()
    stack = Stack.from_settings(load_settings())
    monitor = stack.monitor.status()
    if monitor.pid is None or not monitor.healthy:
        raise SystemExit("the monitor is not running: start the stack with `revetl up`")
    pid, url = monitor.pid, stack.monitor.url

    idle = measure_idle(pid, url, args.idle)
    loaded, load = measure_load(stack, pid, url, args.rate, args.seconds)
    result = {
        "monitor_interval_s": stack.settings.monitor_interval_s,
        "idle": idle.summary(),
        "under_load": {
            **loaded.summary(),
            "target_rate": args.rate,
            "achieved_rate": load["achieved_rate"],
            "sales_sent": load["sales_sent"],
            "sales_applied": load["applied"],
            "sale_to_product_db_ms": load["latency_ms"],
            "note": "sampled over the whole latency run: user setup, "
            f"{args.seconds:.0f} s of sales, then the wait until all were applied",
        },
    }
    write_result(f"monitor-{args.rate}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
