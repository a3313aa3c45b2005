"""A real Apache Kafka broker (KRaft, single node) from Maven Central's jars, on Debian's Java 17."""

from __future__ import annotations

import base64
import hashlib
import shutil
import string
import uuid
from pathlib import Path

from native.context import Context
from native.services.base import Program, Service

HERE = Path(__file__).resolve().parents[1] / "kafka"


class KafkaService(Service):
    """Owns `<state>/kafka` (the KRaft log directory and its server.properties) and one broker on
    KAFKA_HOST:KAFKA_PORT. After start it creates the topics (LogAppendTime, KAFKA_PARTITIONS) as
    compose's kafka-init does. Its topics live as long as the state folder: `./stack down -v`
    deletes them together with Postgres' data (the consumer's offsets), as compose's `down -v`."""

    name = "kafka"
    start_timeout = 90

    def home(self, ctx: Context) -> Path:
        # Keyed by the pom too: a change of the jar set downloads a fresh folder.
        digest = hashlib.sha256((HERE / "pom.xml").read_bytes()).hexdigest()[:8]
        return ctx.cache / f"kafka-{ctx['KAFKA_VERSION']}-{digest}"

    def install(self, ctx: Context) -> None:
        if not shutil.which("java"):
            ctx.apt_install("openjdk-17-jre-headless")
        home = self.home(ctx)
        ctx.maven_fetch(
            HERE / "pom.xml",
            home / "lib" / ".complete",
            f"Apache Kafka {ctx['KAFKA_VERSION']}",
            "dependency:copy-dependencies",
            f"-Dkafka.version={ctx['KAFKA_VERSION']}",
            f"-DoutputDirectory={home / 'lib'}",
            "-DincludeScope=runtime",
        )
        (home / "lib" / ".complete").touch()

    def _java(self, ctx: Context, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-cp",
            f"{self.home(ctx) / 'lib'}/*",
            f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
            main,
            *args,
        ]

    def prepare(self, ctx: Context) -> None:
        state = ctx.state / "kafka"
        data = state / "data"
        state.mkdir(parents=True, exist_ok=True)
        template = string.Template((HERE / "server.properties.template").read_text())
        props = state / "server.properties"
        props.write_text(
            template.substitute(
                KAFKA_HOST=ctx["KAFKA_HOST"],
                KAFKA_PORT=ctx["KAFKA_PORT"],
                KAFKA_CONTROLLER_PORT=ctx["KAFKA_CONTROLLER_PORT"],
                KAFKA_LOG_DIRS=str(data),
                KAFKA_NUM_PARTITIONS=ctx["KAFKA_PARTITIONS"],
            )
        )
        if (data / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        ctx.log(f"formatting Kafka storage at {data} (cluster {cluster_id})")
        ctx.run(
            self._java(
                ctx, "kafka.tools.StorageTool", "format", "--standalone", f"--cluster-id={cluster_id}", "-c", str(props)
            ),
            "kafka storage format",
        )

    def program(self, ctx: Context) -> Program:
        argv = self._java(ctx, "kafka.Kafka", str(ctx.state / "kafka" / "server.properties"))
        # The broker reads none of these: they are what server.properties is rendered from, so that a
        # change of one restarts the broker on the next `./stack up`.
        env = {k: ctx[k] for k in ("KAFKA_HOST", "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_PARTITIONS")}
        # the heap compose's broker has (KAFKA_HEAP_OPTS); the rest of its environment is the
        # image's input for server.properties, which native mode renders from its own template
        heap = ctx.compose("kafka").value("KAFKA_HEAP_OPTS").split()
        return Program(argv=[argv[0], *heap, "-XX:+UseG1GC", *argv[1:]], env=env)

    def port(self, ctx: Context) -> str:
        return f"{ctx['KAFKA_HOST']}:{ctx['KAFKA_PORT']}"

    def healthy(self, ctx: Context) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": ctx["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 0}).list_topics(
                timeout=2
            )
            return bool(md.brokers)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def after_start(self, ctx: Context) -> None:
        from common.topics import ensure_topics

        ensure_topics(
            ctx["KAFKA_BOOTSTRAP_SERVERS"],
            ctx["KAFKA_TOPIC"],
            ctx["KAFKA_PROFILES_TOPIC"],
            int(ctx["KAFKA_PARTITIONS"]),
        )
