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

from common.settings import REPO_ROOT
from native.context import Context
from native.services.base import Program, Service

SUPERSET = REPO_ROOT / "superset"
HOST = "127.0.0.1"


def gunicorn_options(ctx: Context) -> list[str]:
    """gunicorn's options in both modes (compose's superset command lists the same, with .env's values).

    Request lines and header fields keep gunicorn's bounds (8 KiB): the public dashboard's URLs are
    short and Superset's explore keeps its state server-side (form_data_key). Bodies are bounded by
    Flask (SUPERSET_MAX_CONTENT_LENGTH). A worker silent for SUPERSET_GUNICORN_TIMEOUT is replaced
    (gthread workers keep signalling while their threads serve long requests; Trino's
    TRINO_QUERY_MAX_EXECUTION_TIME bounds those), and idle keep-alive connections are closed after
    SUPERSET_GUNICORN_KEEPALIVE seconds, so idle clients can't hold the threads."""
    return [
        "--workers=2",
        "--worker-class=gthread",
        # 8: superset/public_cache.py keeps some free for replayed answers whatever clients send
        "--threads=8",
        f"--timeout={ctx['SUPERSET_GUNICORN_TIMEOUT']}",
        f"--graceful-timeout={ctx['SUPERSET_GUNICORN_TIMEOUT']}",
        f"--keep-alive={ctx['SUPERSET_GUNICORN_KEEPALIVE']}",
        "--limit-request-line=8190",
        "--limit-request-field_size=8190",
    ]


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
        """What superset_config.py and bootstrap.sh read; compose's x-superset-env sets the same."""
        env = {
            "SUPERSET_CONFIG_PATH": str(SUPERSET / "superset_config.py"),
            "SUPERSET_HOME": str(self.home(ctx)),
            "SUPERSET_SECRET_KEY": ctx["SUPERSET_SECRET_KEY"],
            # superset_config.py builds the metadata URL from these (superset/metadata_db.py)
            "SUPERSET_DB_USER": ctx["SUPERSET_DB_USER"],
            "SUPERSET_DB_PASSWORD": ctx["SUPERSET_DB_PASSWORD"],
            "SUPERSET_DB": ctx["SUPERSET_DB"],
            "POSTGRES_HOST": ctx["POSTGRES_HOST"],
            "POSTGRES_PORT": ctx["POSTGRES_PORT"],
            "SUPERSET_ADMIN_USER": ctx["SUPERSET_ADMIN_USER"],
            "SUPERSET_ADMIN_PASSWORD": ctx["SUPERSET_ADMIN_PASSWORD"],
            "TRINO_HOST": ctx["TRINO_HOST"],
            "TRINO_PORT": ctx["TRINO_PORT"],
            "SUPERSET_RATE_LIMIT_CHART_DATA": ctx["SUPERSET_RATE_LIMIT_CHART_DATA"],
            "SUPERSET_RATE_LIMIT_LOGIN": ctx["SUPERSET_RATE_LIMIT_LOGIN"],
            "SUPERSET_MAX_CONTENT_LENGTH": ctx["SUPERSET_MAX_CONTENT_LENGTH"],
            "SUPERSET_PUBLIC_CACHE_SECONDS": ctx["SUPERSET_PUBLIC_CACHE_SECONDS"],
            # gunicorn reads these from its argv; here too so that changing them restarts it
            "SUPERSET_GUNICORN_TIMEOUT": ctx["SUPERSET_GUNICORN_TIMEOUT"],
            "SUPERSET_GUNICORN_KEEPALIVE": ctx["SUPERSET_GUNICORN_KEEPALIVE"],
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
                *gunicorn_options(ctx),
                f"--bind={HOST}:{ctx['SUPERSET_PORT']}",
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
