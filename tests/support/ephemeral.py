"""A throwaway native stack on free ports with its own state folder, for tests and benchmarks.

It drives the same `./stack` users run; only the ports and the state folder differ.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.settings import REPO_ROOT as ROOT

ARTIFACTS = ROOT / "artifacts"


#: Ports handed out by this process, never handed out twice (a stack binds them minutes later).
_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' local ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(span: int = 1) -> int:
    """A loopback port (and the span - 1 after it) free now, below the kernel's ephemeral range.

    A stack binds its ports minutes after choosing them, while its services open hundreds of
    outgoing connections; a port from the ephemeral range (what binding port 0 gives) may by then
    be the local end of one of them (measured: the postgres exporter of a soak stack found its
    port taken). Ports below that range are never given to outgoing connections."""
    low = _ephemeral_low()
    floor = 10_000 if low > 20_000 else 1_024
    while True:
        port = random.randrange(floor, low - span)
        block = range(port, port + span)
        if _GIVEN.intersection(block):
            continue
        try:
            for p in block:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        _GIVEN.update(block)
        return port


class EphemeralStack:
    """`./stack` with its own state folder and ports: the same tool users run, isolated per run."""

    def __init__(self, services: list[str], extra_env: dict[str, str] | None = None) -> None:
        # Postgres runs as the postgres user, which must reach the state folder (pytest's tmp is 0700).
        self.state = Path(tempfile.mkdtemp(prefix="rta-", dir="/tmp"))
        os.chmod(self.state, 0o755)
        kafka_port = free_port()
        self.env = {
            **os.environ,
            "STACK_STATE_DIR": str(self.state),
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(free_port()),
            "KAFKA_HOST": "127.0.0.1",
            "KAFKA_PORT": str(kafka_port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
            "TRINO_PORT": str(free_port()),
            "SUPERSET_PORT": str(free_port()),
            "AIRFLOW_PORT": str(free_port()),
            "PROMETHEUS_PORT": str(free_port()),
            "ALERTMANAGER_PORT": str(free_port()),
            "POSTGRES_EXPORTER_PORT": str(free_port()),
            "PIPELINE_EXPORTER_PORT": str(free_port()),
            # the consumer's members serve metrics from this port up, the producer on its own
            "CONSUMER_METRICS_PORT": str(free_port(span=8)),
            "PRODUCER_METRICS_PORT": str(free_port()),
            "COLLECTOR_PORT": str(free_port()),
            "COLLECTOR_METRICS_PORT": str(free_port()),
            **(extra_env or {}),
        }
        self.services = services
        #: Seconds each service took to become healthy in the last `up` that started it.
        self.started: dict[str, float] = {}

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ROOT / "stack"), *args],
            env=self.env,
            cwd=ROOT,
            check=check,
            timeout=timeout,
            capture_output=True,
            text=True,
        )

    def up(self, *services: str) -> None:
        proc = self("up", *(services or self.services), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"./stack up failed:\n{proc.stdout}\n{proc.stderr}")
        for name, seconds in re.findall(r"stack: (\w+) is healthy \(([\d.]+) s\)", proc.stderr):
            self.started[name] = float(seconds)

    def down(self) -> None:
        self("down", check=False, timeout=180)
        logs = self.state / "logs"
        if logs.exists():
            dest = ARTIFACTS / "logs" / self.state.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(logs, dest, dirs_exist_ok=True)
        shutil.rmtree(self.state, ignore_errors=True)

    def owner_dsn(self) -> str:
        return self._dsn("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD")

    def airflow_dsn(self) -> str:
        """Airflow's metadata database (DAG runs, task instances), as its own user."""
        return self._dsn("AIRFLOW_DB", "AIRFLOW_DB_USER", "AIRFLOW_DB_PASSWORD")

    def _dsn(self, db: str, user: str, password: str) -> str:
        from psycopg.conninfo import make_conninfo

        from native.context import merged_env

        env = {**merged_env(), **self.env}
        return make_conninfo(
            host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], dbname=env[db], user=env[user], password=env[password]
        )


@contextlib.contextmanager
def running_stack(
    services: list[str], extra_env: dict[str, str] | None = None, given: EphemeralStack | None = None
) -> Iterator[EphemeralStack]:
    """A benchmark's stack: a new one, up for the run and down after it; or, given one (a test's,
    running every service the benchmark needs), that one, left as it is."""
    if given is not None:
        missing = set(services) - set(given.services)
        if missing:
            raise ValueError(f"the given stack does not run {sorted(missing)}")
        yield given
        return
    stack = EphemeralStack(services, extra_env)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
