"""Fetch the Kafka, Connect and Debezium jars from Maven Central with `mvn`."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.config import INFRA_DIR, Settings
from services.errors import ConfigurationError, FatalError

log = logging.getLogger(__name__)

STAMP = ".pom.sha256"


@dataclass(frozen=True)
class JarSet:
    """The jars one pom under infra/maven resolves to, copied into one folder."""

    name: str
    pom: Path
    target: Path

    def pom_digest(self) -> str:
        return hashlib.sha256(self.pom.read_bytes()).hexdigest()

    def is_current(self) -> bool:
        stamp = self.target / STAMP
        return stamp.exists() and stamp.read_text().strip() == self.pom_digest()

    def jars(self) -> list[Path]:
        return sorted(self.target.glob("*.jar"))


def kafka_jars_dir(settings: Settings) -> Path:
    return settings.path("jars", "kafka")


def plugin_path(settings: Settings) -> Path:
    """Connect's plugin.path: one sub-folder per connector plugin."""
    return settings.path("jars", "plugins")


def jar_sets(settings: Settings) -> list[JarSet]:
    return [
        JarSet("kafka", INFRA_DIR / "maven/kafka/pom.xml", kafka_jars_dir(settings)),
        JarSet(
            "debezium",
            INFRA_DIR / "maven/debezium/pom.xml",
            plugin_path(settings) / "debezium-postgres",
        ),
    ]


def missing_jars(settings: Settings) -> list[str]:
    """Names of the jar sets not fetched yet, or fetched from an older pom."""
    return [js.name for js in jar_sets(settings) if not js.is_current()]


def fetch(
    settings: Settings, on_line: Callable[[str, str], None] | None = None
) -> list[tuple[JarSet, bool, float]]:
    """Resolve every jar set that is not current; returns (set, fetched, seconds)."""
    if shutil.which(settings.mvn) is None:
        message = (
            f"Maven ({settings.mvn!r}) not found: install Debian's maven package "
            "(apt-get install maven) or set REVETL_MVN"
        )
        raise ConfigurationError(message)
    results = []
    for js in jar_sets(settings):
        if js.is_current():
            results.append((js, False, 0.0))
            continue
        started = time.monotonic()
        _copy_dependencies(settings, js, on_line)
        results.append((js, True, time.monotonic() - started))
    return results


def _copy_dependencies(
    settings: Settings, js: JarSet, on_line: Callable[[str, str], None] | None
) -> None:
    staging = js.target.with_name(js.target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        settings.mvn,
        "--batch-mode",
        "-f", str(js.pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-29:], line]
        if on_line is not None:
            on_line(js.name, line)
    if proc.wait() != 0:
        message = (
            f"mvn could not resolve the {js.name} jars from {js.pom}; its last "
            "lines:\n" + "\n".join(tail) + "\nCheck that Maven Central is "
            "reachable, then run `make setup` again."
        )
        raise FatalError(message)
    (staging / STAMP).write_text(js.pom_digest() + "\n")
    shutil.rmtree(js.target, ignore_errors=True)
    js.target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(js.target)
    log.info("fetched jars=%s count=%d", js.name, len(js.jars()))


def jar_version(directory: Path, prefix: str) -> str | None:
    """The version in a jar's file name, e.g. 4.3.1 for kafka-clients-4.3.1.jar."""
    for jar in sorted(directory.glob(f"{prefix}-*.jar")):
        rest = jar.name[len(prefix) + 1 : -len(".jar")]
        if rest[:1].isdigit():
            return rest
    return None
