"""Apache Airflow 3 from PyPI in a virtualenv of its own (airflow/requirements.lock.txt), with
dbt in another (dbt_project/requirements.lock.txt): scheduler, dag-processor and API server as
separate processes, LocalExecutor, metadata in the AIRFLOW_DB database of the stack's Postgres.

The settings are compose's x-airflow block (its env_file airflow/airflow.env and its environment),
translated for local processes by native/compose.py; the DAGs run `dbt build` every minute.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from common.settings import REPO_ROOT
from native.compose import NativeService
from native.context import Context, wait_until
from native.services.base import Program, Service

ROOT = REPO_ROOT
HOST = "127.0.0.1"
#: unpaused on every start (a DAG paused by hand in the UI would otherwise stay paused)
DAGS = ("analytics_dbt_build", "analytics_reconciliation", "streaming_source_freshness")


class AirflowService(Service):
    """Owns `<state>/airflow` (AIRFLOW_HOME, logs) and three processes: scheduler, dag-processor and
    API server on AIRFLOW_PORT; its metadata is the AIRFLOW_DB database. After start it unpauses
    the DAGs. Airflow and dbt each run from a cached virtualenv of their own."""

    name = "airflow"
    depends_on = ("postgres",)
    # a first `airflow db migrate` on an empty database takes ~30-60 s on 2 busy cores
    start_timeout = 300

    def venv(self, ctx: Context) -> Path:
        return ctx.venv("airflow", ROOT / "airflow/requirements.lock.txt")

    def dbt_venv(self, ctx: Context) -> Path:
        return ctx.venv("dbt", ROOT / "dbt_project/requirements.lock.txt")

    def install(self, ctx: Context) -> None:
        self.venv(ctx)
        self.dbt_venv(ctx)

    def home(self, ctx: Context) -> Path:
        return ctx.state / "airflow"

    def prepare(self, ctx: Context) -> None:
        home = self.home(ctx)
        (home / "dbt").mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        # The db-migrated marker is left alone here: a second `up` while Airflow runs must find it
        # (healthy() reads it). Each start of the scheduler replaces it (programs()).
        fernet = home / "fernet.key"
        if not fernet.exists():
            fernet.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
            os.chmod(fernet, 0o600)
        passwords = home / "simple_auth_manager_passwords.json"
        passwords.write_text(
            json.dumps(
                {
                    ctx["AIRFLOW_ADMIN_USER"]: ctx["AIRFLOW_ADMIN_PASSWORD"],
                    ctx["AIRFLOW_MONITOR_USER"]: ctx["AIRFLOW_MONITOR_PASSWORD"],
                }
            )
        )
        os.chmod(passwords, 0o600)

    def _migrated(self, ctx: Context) -> Path:
        return self.home(ctx) / "db-migrated"

    def declared(self, ctx: Context) -> NativeService:
        # one environment for the three processes: compose gives each container x-airflow's
        return ctx.compose("airflow-scheduler", volumes={"airflow-logs": self.home(ctx) / "logs"})

    def env(self, ctx: Context) -> dict[str, str]:
        return self.env_and_settings(ctx)[0]

    def env_and_settings(self, ctx: Context) -> tuple[dict[str, str], dict[str, str]]:
        """Compose's x-airflow environment (airflow/airflow.env, its env_file, and `environment`;
        the metadata URL too, from the same _CMD), translated for local processes; below, only
        what differs natively."""
        home = self.home(ctx)
        port = ctx["AIRFLOW_PORT"]
        declared = self.declared(ctx)
        env = declared.environment(
            {
                "PATH": f"{self.venv(ctx) / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                "HOME": os.environ.get("HOME", "/root"),
                "LANG": "C.UTF-8",
                "AIRFLOW_HOME": str(home),
                # compose's image brings its own key; natively one generated per state folder
                "AIRFLOW__CORE__FERNET_KEY": (home / "fernet.key").read_text().strip(),
                # compose's API server listens on 8080 in its container; here on loopback
                "AIRFLOW__API__HOST": HOST,
                "AIRFLOW__API__PORT": port,
                # Every component signs and checks the task API's tokens with this; >= 64 bytes,
                # derived from .env's secret so that all processes (and restarts) agree.
                "AIRFLOW__API_AUTH__JWT_SECRET": hashlib.sha512(
                    f"rt-analytics airflow jwt {ctx['AIRFLOW_JWT_SECRET']}".encode()
                ).hexdigest(),
                # natively ./stack asks the API server; the scheduler's server would take port 8974
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
                # dbt from its own virtualenv; target and logs in the state folder
                "DBT_EXECUTABLE": str(self.dbt_venv(ctx) / "bin" / "dbt"),
                "DBT_TARGET_PATH": str(home / "dbt" / "target"),
                "DBT_LOG_PATH": str(home / "dbt" / "logs"),
            }
        )
        return env, {**declared.settings, "AIRFLOW_PORT": port, "AIRFLOW_JWT_SECRET": ctx["AIRFLOW_JWT_SECRET"]}

    def programs(self, ctx: Context) -> list[Program]:
        env, settings = self.env_and_settings(ctx)
        # what the translation read, plus what the overrides derive from
        marker = str(self._migrated(ctx))
        # compose runs `airflow db migrate` as the airflow-init job before the others start; here
        # the scheduler runs it first and the other two wait for it: for a marker newer than their
        # own start (one left by an earlier start must not let them through before the migration).
        wait = (
            f'started=$(date +%s); while [ ! -e "{marker}" ] || [ "$(stat -c %Y "{marker}")" -lt "$started" ]; '
            "do sleep 1; done; exec "
        )
        migrate = f'rm -f "{marker}"; airflow db migrate && touch "{marker}" && exec '
        return [
            Program(
                name="scheduler",
                argv=[
                    "bash",
                    "-c",
                    migrate + "airflow scheduler --skip-serve-logs",
                ],
                env=env,
                settings=settings,
            ),
            Program(
                name="dag_processor", argv=["bash", "-c", wait + "airflow dag-processor"], env=env, settings=settings
            ),
            Program(
                name="api_server",
                argv=["bash", "-c", wait + f"airflow api-server --host {HOST} --port {ctx['AIRFLOW_PORT']}"],
                env=env,
                settings=settings,
            ),
        ]

    def port(self, ctx: Context) -> str:
        return f"{HOST}:{ctx['AIRFLOW_PORT']}"

    def _get(self, ctx: Context, path: str, token: str | None = None, method: str = "GET", body=None):
        request = urllib.request.Request(
            f"http://{HOST}:{ctx['AIRFLOW_PORT']}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read() or b"null")

    def healthy(self, ctx: Context) -> bool:
        """Metadata database, scheduler and dag processor healthy, with heartbeats from this start:
        newer than the migration marker the scheduler writes as it starts (just after a restart,
        the previous processes' heartbeats still look healthy)."""
        try:
            started = self._migrated(ctx).stat().st_mtime
        except FileNotFoundError:
            return False
        try:
            health = self._get(ctx, "/api/v2/monitor/health")
        except (urllib.error.URLError, OSError, ValueError):
            return False
        for component, beat in (
            ("scheduler", "latest_scheduler_heartbeat"),
            ("dag_processor", "latest_dag_processor_heartbeat"),
        ):
            state = health.get(component) or {}
            if state.get("status") != "healthy" or not state.get(beat):
                return False
            if _epoch(state[beat]) < started - 1:
                return False
        return (health.get("metadatabase") or {}).get("status") == "healthy"

    def token(self, ctx: Context) -> str:
        return self._get(
            ctx,
            "/auth/token",
            method="POST",
            body={"username": ctx["AIRFLOW_ADMIN_USER"], "password": ctx["AIRFLOW_ADMIN_PASSWORD"]},
        )["access_token"]

    def after_start(self, ctx: Context) -> None:
        """Unpauses the DAGs once the dag processor has stored them (is_paused_upon_creation=False
        covers a new database; this covers one where somebody paused them)."""
        token = self.token(ctx)

        def stored(dag_id: str) -> bool:
            try:
                self._get(ctx, f"/api/v2/dags/{dag_id}", token)
                return True
            except (urllib.error.URLError, OSError):
                return False

        for dag_id in DAGS:
            if not wait_until(lambda d=dag_id: stored(d), 120, 1):
                raise SystemExit(f"stack: Airflow did not load DAG {dag_id} in 120 s; see ./stack logs airflow")
            self._get(ctx, f"/api/v2/dags/{dag_id}", token, method="PATCH", body={"is_paused": False})
        ctx.log(f"airflow: DAGs unpaused: {', '.join(DAGS)}; UI http://{HOST}:{ctx['AIRFLOW_PORT']}")


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
