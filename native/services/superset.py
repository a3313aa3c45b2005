"""Apache Superset from PyPI in a virtualenv of its own, served by gunicorn.

Its environment and gunicorn's command are compose's (x-superset-env, the superset service's
command), translated for local processes by native/compose.py.
Each start first runs superset/bootstrap.sh (the script compose's superset-init job runs: migrate,
roles, admin, the dashboard bundle), which then execs gunicorn: Superset's app does not boot on an
unmigrated metadata database, so provisioning cannot wait for health as other services' jobs do.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from common.settings import REPO_ROOT
from native.compose import NativeService
from native.context import Context
from native.services.base import Program, Service

SUPERSET = REPO_ROOT / "superset"
HOST = "127.0.0.1"


class SupersetService(Service):
    """Owns `<state>/superset` (its home) and gunicorn on SUPERSET_PORT; every start provisions
    first (superset/bootstrap.sh). Its metadata lives in Postgres, its virtualenv in the cache."""

    name = "superset"
    depends_on = ("postgres", "trino")
    #: provisioning (~30-40 s) plus gunicorn's boot
    start_timeout = 240

    def venv(self, ctx: Context) -> Path:
        return ctx.venv("superset", SUPERSET / "requirements.lock.txt")

    def install(self, ctx: Context) -> None:
        self.venv(ctx)

    def home(self, ctx: Context) -> Path:
        return ctx.state / "superset"

    def prepare(self, ctx: Context) -> None:
        self.home(ctx).mkdir(parents=True, exist_ok=True)

    def env(self, ctx: Context) -> dict[str, str]:
        """Compose's x-superset-env (what superset_config.py and bootstrap.sh read), translated
        for a local process; below, only what differs natively."""
        return self.declared(ctx).environment(self.overrides(ctx))

    def declared(self, ctx: Context) -> NativeService:
        # SUPERSET_HOME: the folder native mode has always kept it in (compose: superset-home)
        return ctx.compose("superset", volumes={"superset-home": self.home(ctx)})

    def overrides(self, ctx: Context) -> dict[str, str | None]:
        overrides: dict[str, str | None] = {
            "PATH": f"{self.venv(ctx) / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
        }
        # a test's shorter cache (superset_config.py's default otherwise; compose does not set it)
        if "SUPERSET_DATA_CACHE_TIMEOUT" in ctx.env:
            overrides["SUPERSET_DATA_CACHE_TIMEOUT"] = ctx.env["SUPERSET_DATA_CACHE_TIMEOUT"]
        return overrides

    def program(self, ctx: Context) -> Program:
        declared = self.declared(ctx)
        gunicorn, *options, app = declared.command()
        env = declared.environment(self.overrides(ctx))
        return Program(
            # Provision first (compose's superset-init job), then compose's superset command, its
            # --bind translated to loopback and SUPERSET_PORT.
            argv=[
                # compose's superset-init command (bash bootstrap.sh), which then execs the rest
                *ctx.compose("superset-init").command(),
                str(self.venv(ctx) / "bin" / gunicorn),
                *options,
                # its default control socket is one fixed path per user: two stacks would share it
                "--no-control-socket",
                app,
            ],
            env=env,
            settings=declared.settings,
        )

    def port(self, ctx: Context) -> str:
        return f"{HOST}:{ctx['SUPERSET_PORT']}"

    def healthy(self, ctx: Context) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{ctx['SUPERSET_PORT']}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False
