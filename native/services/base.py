"""The shape of a native service: install once, prepare state, run under supervisord, check health."""

from __future__ import annotations

from dataclasses import dataclass, field

from native.context import Context


@dataclass
class Program:
    """One supervisord program: argv plus the environment it runs with."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: for services of several processes (e.g. airflow: scheduler, dag-processor, api-server):
    #: each gets its own supervisord program `<service>_<name>`, grouped under the service name
    name: str | None = None
    user: str | None = None
    directory: str | None = None
    numprocs: int = 1
    stopsignal: str = "TERM"
    stopwaitsecs: int = 30
    #: the stack's settings its argv and env were made from (a translation's `settings`): a change
    #: of one restarts it on the next `up`, as a change of a .env variable in its env does
    settings: dict[str, str] = field(default_factory=dict)


class Service:
    """One service of `./stack`, as compose has one service per image: it owns its state folder
    under the stack's state directory and the supervisord programs it declares.

    `./stack up` calls install (once, cached), prepare, then starts its programs and polls
    `healthy` for `start_timeout` seconds, then `after_start`. Every method must be idempotent:
    `up` runs again over a running stack. A service reads settings from `ctx.env` only (the
    merged `.env` and environment), never from os.environ, so that a test's stack stays its own."""

    name: str = ""
    depends_on: tuple[str, ...] = ()
    #: seconds `up` waits for health before it gives up
    start_timeout: float = 60

    def install(self, ctx: Context) -> None:
        """Packages, downloads and virtualenvs this service needs; idempotent and cached."""

    def prepare(self, ctx: Context) -> None:
        """State it needs before its first start (data directories, rendered config)."""

    def program(self, ctx: Context) -> Program:
        raise NotImplementedError

    def programs(self, ctx: Context) -> list[Program]:
        """The processes of this service; override for more than one (give each a `name`)."""
        return [self.program(ctx)]

    def healthy(self, ctx: Context) -> bool:
        """One health probe, like a compose healthcheck."""
        return True

    def after_start(self, ctx: Context) -> None:
        """One-shot jobs once healthy (the compose init containers)."""

    def port(self, ctx: Context) -> str:
        return ""
