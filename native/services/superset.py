"""Apache Superset from PyPI in a virtualenv of its own, served by gunicorn.

Each start first runs superset/bootstrap.sh (the script compose's superset-init job runs: migrate,
roles, admin, the dashboard bundle), which then execs gunicorn: Superset's app does not boot on an
unmigrated metadata database, so provisioning cannot wait for health as other services' jobs do.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from native.context import Context
from native.services.base import Program, Service

SUPERSET = Path(__file__).resolve().parents[2] / "superset"
HOST = "127.0.0.1"


class SupersetService(Service):
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
        """What superset_config.py and bootstrap.sh read; compose's x-superset-env sets the same."""
        metadata = (
            f"postgresql+psycopg2://{quote(ctx['SUPERSET_DB_USER'], safe='')}:"
            f"{quote(ctx['SUPERSET_DB_PASSWORD'], safe='')}@{ctx['POSTGRES_HOST']}:{ctx['POSTGRES_PORT']}/"
            f"{ctx['SUPERSET_DB']}"
        )
        env = {
            "SUPERSET_CONFIG_PATH": str(SUPERSET / "superset_config.py"),
            "SUPERSET_HOME": str(self.home(ctx)),
            "SUPERSET_SECRET_KEY": ctx["SUPERSET_SECRET_KEY"],
            "SUPERSET_METADATA_DB_URI": metadata,
            "SUPERSET_ADMIN_USER": ctx["SUPERSET_ADMIN_USER"],
            "SUPERSET_ADMIN_PASSWORD": ctx["SUPERSET_ADMIN_PASSWORD"],
            "TRINO_HOST": ctx["TRINO_HOST"],
            "TRINO_PORT": ctx["TRINO_PORT"],
            "PATH": f"{self.venv(ctx) / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
        }
        if "SUPERSET_DATA_CACHE_TIMEOUT" in ctx.env:
            env["SUPERSET_DATA_CACHE_TIMEOUT"] = ctx.env["SUPERSET_DATA_CACHE_TIMEOUT"]
        return env

    def program(self, ctx: Context) -> Program:
        return Program(
            # Provision, then the command compose's superset service runs, bound to loopback.
            argv=[
                "bash",
                str(SUPERSET / "bootstrap.sh"),
                str(self.venv(ctx) / "bin" / "gunicorn"),
                "--workers=2",
                "--worker-class=gthread",
                "--threads=4",
                "--timeout=120",
                f"--bind={HOST}:{ctx['SUPERSET_PORT']}",
                "--limit-request-line=0",
                "--limit-request-field_size=0",
                # its default control socket is one fixed path per user: two stacks would share it
                "--no-control-socket",
                "superset.app:create_app()",
            ],
            env=self.env(ctx),
        )

    def port(self, ctx: Context) -> str:
        return f"{HOST}:{ctx['SUPERSET_PORT']}"

    def healthy(self, ctx: Context) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{ctx['SUPERSET_PORT']}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False
