"""PostgreSQL from Debian's packages, with the same init scripts as the official image."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
import psycopg.sql

from native.context import Context
from native.services.base import Program, Service


def major_version(ctx: Context) -> str:
    """The major version compose's image runs (POSTGRES_VERSION in .env): Debian's postgresql-N."""
    return ctx["POSTGRES_VERSION"].split(".")[0]


def _bin_dir(ctx: Context) -> Path:
    binary = Path("/usr/lib/postgresql") / major_version(ctx) / "bin" / "postgres"
    if not binary.exists():
        raise SystemExit(f"stack: PostgreSQL {major_version(ctx)} is not installed and apt-get could not install it")
    return binary.parent


class PostgresService(Service):
    """Owns `<state>/postgres` (data directory, initdb'ed once; socket) and one postgres server on
    POSTGRES_HOST:POSTGRES_PORT. After start it runs postgres/init/ (roles, databases, schemas,
    grants), as compose's postgres-init job does, idempotently. A new major version does not
    convert an existing data directory: that is an upgrade for the operator (docs/operations.md)."""

    name = "postgres"
    start_timeout = 30

    def install(self, ctx: Context) -> None:
        ctx.apt_install(f"postgresql-{major_version(ctx)}")

    def data_dir(self, ctx: Context) -> Path:
        return ctx.state / "postgres" / "data"

    def socket_dir(self, ctx: Context) -> Path:
        return ctx.state / "postgres" / "run"

    def prepare(self, ctx: Context) -> None:
        data, sock = self.data_dir(ctx), self.socket_dir(ctx)
        # The server runs as the postgres user (initdb refuses root): it must reach its folders.
        for d in (ctx.state, data.parent):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        sock.mkdir(exist_ok=True)
        shutil.chown(sock, "postgres", "postgres")
        if (data / "PG_VERSION").exists():
            return
        ctx.log(f"initialising a PostgreSQL data directory at {data}")
        data.mkdir(exist_ok=True)
        shutil.chown(data, "postgres", "postgres")
        os.chmod(data, 0o700)
        pwfile = data.parent / ".pwfile"
        pwfile.write_text(ctx["POSTGRES_PASSWORD"] + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(pwfile, 0o600)
        try:
            ctx.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    str(_bin_dir(ctx) / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    ctx["POSTGRES_USER"],
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def program(self, ctx: Context) -> Program:
        return Program(
            argv=[
                str(_bin_dir(ctx) / "postgres"),
                "-D",
                str(self.data_dir(ctx)),
                "-c",
                f"listen_addresses={ctx['POSTGRES_HOST']}",
                "-p",
                ctx["POSTGRES_PORT"],
                "-c",
                f"unix_socket_directories={self.socket_dir(ctx)}",
                # compose's server options (shared_buffers, max_connections)
                *ctx.compose("postgres").command()[1:],
            ],
            user="postgres",
            # Its own folder as the working directory: the postgres user may not enter the checkout's
            # (a clone under root's home, mode 700: supervisord's chdir failed and postgres never started).
            directory=str(self.data_dir(ctx)),
            # SIGINT is Postgres's fast shutdown: roll back open transactions, stop at once.
            stopsignal="INT",
        )

    def port(self, ctx: Context) -> str:
        return f"{ctx['POSTGRES_HOST']}:{ctx['POSTGRES_PORT']}"

    def healthy(self, ctx: Context) -> bool:
        try:
            with psycopg.connect(owner_dsn(ctx, "postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def after_start(self, ctx: Context) -> None:
        """Creates POSTGRES_DB and runs postgres/init/*.sh, as the official image's entrypoint does.

        Every statement is idempotent, so this runs on each `up` (compose's postgres-init job does too)."""
        with psycopg.connect(owner_dsn(ctx, "postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ctx["POSTGRES_DB"],)).fetchone():
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(ctx["POSTGRES_DB"])))
        env = {
            **ctx.env,
            "PGHOST": ctx["POSTGRES_HOST"],
            "PGPORT": ctx["POSTGRES_PORT"],
            "PGPASSWORD": ctx["POSTGRES_PASSWORD"],
            "PATH": f"{_bin_dir(ctx)}:{os.environ['PATH']}",
        }
        for script in sorted((ctx.root / "postgres" / "init").glob("*.sh")):
            ctx.run(["bash", str(script)], f"init script {script.name}", env=env)


def owner_dsn(ctx: Context, dbname: str | None = None) -> str:
    return psycopg.conninfo.make_conninfo(
        host=ctx["POSTGRES_HOST"],
        port=ctx["POSTGRES_PORT"],
        dbname=dbname or ctx["POSTGRES_DB"],
        user=ctx["POSTGRES_USER"],
        password=ctx["POSTGRES_PASSWORD"],
    )
