"""The Kafka broker: one KRaft node acting as broker and controller."""

from __future__ import annotations

import base64
import logging
import uuid
from string import Template
from typing import Literal

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported
    AdminClient,
    NewTopic,
    OffsetSpec,
)

from services import jars, process
from services.component import Component
from services.config import INFRA_DIR
from services.errors import ConfigurationError
from services.health import Probe, first_line

log = logging.getLogger(__name__)

LOG4J_CONFIG = INFRA_DIR / "kafka" / "log4j2.properties"


def java_argv(java: str, heap_mb: int, classpath: str, main: str) -> list[str]:
    """The JVM command line shared by the broker and the Connect worker."""
    return [
        java,
        f"-Xms{heap_mb}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp",
        classpath,
        main,
    ]


def admin_client(bootstrap: str) -> AdminClient:
    """An AdminClient that stays quiet while the broker is still starting."""
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": 3000,
            "log_level": 0,
        }
    )


class KafkaBroker(Component):
    name = "kafka"
    port_setting = "REVETL_KAFKA_PORT"

    @property
    def external(self) -> bool:
        return self.settings.kafka_bootstrap is not None

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def bootstrap(self) -> str:
        if self.settings.kafka_bootstrap is not None:
            return self.settings.kafka_bootstrap
        return f"{self.settings.bind_host}:{self.settings.kafka_port}"

    @property
    def address(self) -> str:
        return self.bootstrap

    def _config_path(self) -> str:
        return str(self.settings.path("kafka", "server.properties"))

    def spec(self) -> process.ProcessSpec:
        s = self.settings
        classpath = str(jars.kafka_jars_dir(s) / "*")
        argv = java_argv(s.java, s.kafka_heap_mb, classpath, "kafka.Kafka")
        return process.ProcessSpec(
            name=self.name,
            argv=[*argv, self._config_path()],
            pid_file=s.path("run", "kafka.pid"),
            log_file=s.path("logs", "kafka.log"),
            marker=self._config_path(),
        )

    def prepare(self) -> None:
        s = self.settings
        if jars.missing_jars(s):
            raise ConfigurationError("the Kafka jars are missing: run `make setup`")
        process.ensure_port_free(
            s.bind_host, s.kafka_controller_port, "REVETL_KAFKA_CONTROLLER_PORT"
        )
        data_dir = s.path("kafka", "data")
        template = Template((INFRA_DIR / "kafka" / "server.properties").read_text())
        rendered = template.substitute(
            host=s.bind_host,
            port=s.kafka_port,
            controller_port=s.kafka_controller_port,
            data_dir=data_dir,
        )
        config = s.path("kafka", "server.properties")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(rendered)
        if not (data_dir / "meta.properties").exists():
            self._format_storage(str(config))

    def _format_storage(self, config: str) -> None:
        s = self.settings
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        classpath = str(jars.kafka_jars_dir(s) / "*")
        argv = java_argv(s.java, 256, classpath, "kafka.tools.StorageTool")
        argv += ["format", "-t", cluster_id, "-c", config]
        process.run_checked(argv, "formatting the Kafka log directory")
        log.info("formatted component=kafka cluster_id=%s", cluster_id)

    def probe(self) -> Probe:
        host, _, port = self.bootstrap.split(",")[0].rpartition(":")
        if not process.tcp_open(host, int(port)):
            return Probe(ok=False, detail=f"nothing listens on {host}:{port}")
        try:
            metadata = admin_client(self.bootstrap).list_topics(timeout=3)
        except Exception as exc:  # the client raises KafkaException and others
            return Probe(ok=False, detail=first_line(exc))
        version = None
        if not self.external:
            version = jars.jar_version(jars.kafka_jars_dir(self.settings), "kafka_2.13")
        detail = f"brokers={len(metadata.brokers)} topics={len(metadata.topics)}"
        return Probe(ok=bool(metadata.brokers), version=version, detail=detail)


def ensure_topics(bootstrap: str, topics: list[str], partitions: int = 1) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = admin_client(bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in wanted]
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=30)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def consumer_lag(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    """Messages not yet committed by a consumer group, per topic.

    Reads committed offsets and high watermarks through the admin API, so it joins
    no group and disturbs nobody. A partition the group never committed counts
    from its low watermark.
    """
    admin = admin_client(bootstrap)
    metadata = admin.list_topics(timeout=10)
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata.topics
        for p in metadata.topics[topic].partitions
    ]
    if not partitions:
        return {}
    request = [ConsumerGroupTopicPartitions(group, partitions)]
    committed_future = admin.list_consumer_group_offsets(request)[group]
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in committed_future.result(timeout=10).topic_partitions
    }
    ends = watermarks(admin, partitions, "latest")
    starts = watermarks(admin, partitions, "earliest")
    lag: dict[str, int] = {}
    for key, end in ends.items():
        offset = committed.get(key, -1)
        position = offset if offset >= 0 else starts[key]
        lag[key[0]] = lag.get(key[0], 0) + max(0, end - position)
    return lag


def watermarks(
    admin: AdminClient,
    partitions: list[TopicPartition],
    which: Literal["earliest", "latest"],
    timeout_s: float = 10.0,
) -> dict[tuple[str, int], int]:
    """The low ("earliest") or high ("latest") watermark of each partition."""
    if not partitions:
        return {}
    make = OffsetSpec.latest if which == "latest" else OffsetSpec.earliest
    spec: OffsetSpec = make()  # type: ignore[no-untyped-call]  # untyped stubs
    futures = admin.list_offsets({tp: spec for tp in partitions})
    return {
        (tp.topic, tp.partition): future.result(timeout=timeout_s).offset
        for tp, future in futures.items()
    }
