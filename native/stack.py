"""`./stack`: the docker compose verbs for native mode, on top of supervisord.

./stack up [SERVICE...]      install what is missing, start, wait until healthy (all by default)
./stack down [-v]            stop everything (-v: also delete the data, like compose down -v)
./stack ps                   what runs, where
./stack logs SERVICE [-f]    a service's output
./stack stop|start|restart SERVICE...
./stack test [PYTEST ARGS]   every test tier (each starts the real services it needs)
./stack trino-cli [ARGS]     the Trino CLI, connected to this stack's Trino (catalog postgresql)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from xmlrpc.client import Fault, ServerProxy

from supervisor.xmlrpc import SupervisorTransport

from common.settings import env_file_values
from native.context import Context, wait_until
from native.services import SERVICES
from native.services.base import Program, Service


class Supervisor:
    """A supervisord of this stack's own, its socket and config in the state folder."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.dir = ctx.state / "supervisor"
        self.conf = self.dir / "supervisord.conf"
        self.sock = self.dir / "supervisor.sock"
        self.logs = ctx.state / "logs"

    @property
    def rpc(self):
        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        return ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        try:
            return self.rpc.getState()["statename"] == "RUNNING"
        except (OSError, Fault):
            return False

    def write_config(self, programs: dict[str, tuple[int, list[Program]]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        env_dir = self.dir / "env"
        env_dir.mkdir(exist_ok=True)
        os.chmod(env_dir, 0o700)
        settings = set(env_file_values())
        lines = [
            "[unix_http_server]",
            f"file={self.sock}",
            "chmod=0700",
            "[supervisord]",
            f"logfile={self.dir / 'supervisord.log'}",
            f"pidfile={self.dir / 'supervisord.pid'}",
            f"directory={self.ctx.root}",
            "logfile_maxbytes=5MB",
            "logfile_backups=1",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock}",
        ]
        for service, (priority, progs) in programs.items():
            names = [f"{service}_{p.name}" if p.name else service for p in progs]
            if names != [service]:
                lines += [f"[group:{service}]", f"programs={','.join(names)}", f"priority={priority}"]
            for name, prog in zip(names, progs):
                lines += self._program_lines(name, priority, prog, env_dir, settings)
        self.conf.write_text("\n".join(lines) + "\n")

    def _program_lines(self, name: str, priority: int, prog: Program, env_dir: Path, settings: set[str]) -> list[str]:
        if prog.user:
            command = shlex.join(prog.argv)
        else:
            spec = env_dir / f"{name}.json"
            spec.write_text(json.dumps({"argv": prog.argv, "env": prog.env}))
            os.chmod(spec, 0o600)
            # The digest of its .env settings is part of the command, so supervisord sees a program
            # whose settings changed as changed, and the next `up` restarts it (as compose recreates).
            digest = settings_digest({**{k: v for k, v in prog.env.items() if k in settings}, **prog.settings})
            command = shlex.join([str(self.ctx.python), "-m", "native.run", str(spec), digest])
        many = prog.numprocs > 1
        lines = [
            f"[program:{name}]",
            f"command={command.replace('%', '%%')}",
            f"process_name=%(program_name)s{'_%(process_num)d' if many else ''}",
            f"numprocs={prog.numprocs}",
            f"priority={priority}",
            f"directory={prog.directory or self.ctx.root}",
            "autostart=false",
            "autorestart=unexpected",
            "startsecs=1",
            "startretries=2",
            f"stopsignal={prog.stopsignal}",
            f"stopwaitsecs={prog.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={self.logs / name}{'_%(process_num)d' if many else ''}.log",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=1",
        ]
        if prog.user:
            lines.append(f"user={prog.user}")
        return lines

    def ensure_started(self) -> list[str]:
        """Start supervisord, or load the new config into the running one; returns the groups that
        were running with settings that have changed since (stopped now, to be started again)."""
        if self.running():
            added, changed, removed = self.rpc.reloadConfig()[0]
            restart = [name for name in changed if any(p["statename"] == "RUNNING" for p in self.processes(name))]
            for name in restart:
                self.ctx.log(f"{name}: its settings changed since it started; restarting it")
            for name in removed + changed:
                self.rpc.stopProcessGroup(name)
                self.rpc.removeProcessGroup(name)
            for name in added + changed:
                self.rpc.addProcessGroup(name)
            return restart
        self.sock.unlink(missing_ok=True)
        subprocess.run([str(self.ctx.python.parent / "supervisord"), "-c", str(self.conf)], check=True)
        if not wait_until(self.running, 15):
            raise SystemExit(f"stack: supervisord did not start; see {self.dir / 'supervisord.log'}")
        return []

    def processes(self, group: str) -> list[dict]:
        return [p for p in self.rpc.getAllProcessInfo() if p["group"] == group]


def settings_digest(settings: dict[str, str]) -> str:
    """A program's settings in short: the values it got of the variables `.env` names (`.env` with
    the environment on top); other variables of the shell (TERM, PWD...) are left out by the caller."""
    return "settings=" + hashlib.sha256(json.dumps(sorted(settings.items())).encode()).hexdigest()[:12]


def ordered(names: list[str]) -> list[Service]:
    """The services asked for and what they depend on, dependencies first (compose order)."""
    out: list[Service] = []

    def visit(name: str) -> None:
        if name not in SERVICES:
            raise SystemExit(f"stack: no such service {name!r} (known: {', '.join(SERVICES)})")
        service = SERVICES[name]
        for dep in service.depends_on:
            visit(dep)
        if service not in out:
            out.append(service)

    for name in names or list(SERVICES):
        visit(name)
    return out


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def start_and_wait(ctx: Context, sup: Supervisor, service: Service) -> None:
    states = {p["statename"] for p in sup.processes(service.name)}
    if states != {"RUNNING"}:
        ctx.log(f"starting {service.name}")
        try:
            sup.rpc.startProcessGroup(service.name, False)
        except Fault as exc:
            if "ALREADY_STARTED" not in exc.faultString:
                raise
    started = time.monotonic()
    while True:
        procs = sup.processes(service.name)
        bad = [p for p in procs if p["statename"] in ("FATAL", "EXITED", "BACKOFF", "STOPPED")]
        if bad:
            log = Path(bad[0]["stdout_logfile"])
            raise SystemExit(
                f"stack: {service.name} failed to start ({bad[0]['statename']}); last lines of {log}:\n{tail(log)}"
            )
        if all(p["statename"] == "RUNNING" for p in procs) and service.healthy(ctx):
            break
        if time.monotonic() - started > service.start_timeout:
            raise SystemExit(
                f"stack: {service.name} not healthy after {service.start_timeout:.0f} s; "
                f"see ./stack logs {service.name}"
            )
        time.sleep(0.25)
    service.after_start(ctx)
    ctx.log(f"{service.name} is healthy ({time.monotonic() - started:.1f} s) {service.port(ctx)}")


def up(ctx: Context, names: list[str]) -> None:
    services = ordered(names)
    for service in services:
        service.install(ctx)
    for service in services:
        service.prepare(ctx)
    # The config always lists every service so that a later `up` of one adds nothing to restart.
    programs = {}
    for i, service in enumerate(SERVICES.values()):
        if service in services or _prepared(ctx, service):
            programs[service.name] = (10 * (i + 1), service.programs(ctx))
    sup = Supervisor(ctx)
    sup.write_config(programs)
    restart = sup.ensure_started()
    start_side_by_side(ctx, sup, [s.name for s in SERVICES.values() if s in services or s.name in restart])
    ctx.log(f"up: {', '.join(s.name for s in services)}")


def start_side_by_side(ctx: Context, sup: Supervisor, names: list[str]) -> None:
    """Starts each service once the services it depends on (of `names`; the others already run)
    are healthy, independent ones side by side, as compose does: Airflow starts with Trino, and
    Superset once Trino is healthy. A service that fails stops the services that need it from
    starting; the first failure is raised once the others have settled."""
    with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="start") as pool:
        started: dict[str, Future] = {}

        def start(name: str) -> None:
            for dep in SERVICES[name].depends_on:
                if dep in started:
                    started[dep].result()  # raises the dependency's failure: this one does not start
            start_and_wait(ctx, sup, SERVICES[name])

        for name in names:  # SERVICES' order: a dependency's future exists before its dependents'
            started[name] = pool.submit(start, name)
        failures = [exc for f in started.values() if (exc := f.exception()) is not None]
    if failures:
        raise failures[0]


def _prepared(ctx: Context, service: Service) -> bool:
    conf = Supervisor(ctx).conf
    text = conf.read_text() if conf.exists() else ""
    return f"[program:{service.name}]" in text or f"[group:{service.name}]" in text


def stop_levels(names: set[str]) -> list[list[str]]:
    """The services in the order `down` stops them, as compose does: a service after every service
    that depends on it, those of one level side by side (the consumer before Kafka and Postgres;
    Superset, Airflow, the apps and Prometheus together)."""
    left, levels = set(names), []
    while left:
        needed = {dep for name in left for dep in SERVICES[name].depends_on}
        level = sorted(n for n in left if n not in needed) or sorted(left)
        levels.append(level)
        left -= set(level)
    return levels


def stop_side_by_side(sup: Supervisor, names: list[str]) -> None:
    """Asks each service's processes to stop at once, then waits until none runs (supervisord kills
    a process that outlives its stopwaitsecs)."""
    for name in names:
        sup.rpc.stopProcessGroup(name, False)
    running = ("RUNNING", "STARTING", "STOPPING", "BACKOFF")
    wait_until(lambda: not [p for name in names for p in sup.processes(name) if p["statename"] in running], 120)


def down(ctx: Context, volumes: bool) -> None:
    sup = Supervisor(ctx)
    if sup.running():
        ctx.log("stopping all services")
        pid = int((sup.dir / "supervisord.pid").read_text())
        groups = {p["group"] for p in sup.rpc.getAllProcessInfo()}
        for level in stop_levels({g for g in groups if g in SERVICES}):
            stop_side_by_side(sup, level)
        sup.rpc.stopAllProcesses(True)  # anything not a service of SERVICES
        sup.rpc.shutdown()
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60)
    if volumes and ctx.state.exists():
        ctx.log(f"deleting {ctx.state}")
        shutil.rmtree(ctx.state)


def ps(ctx: Context) -> None:
    sup = Supervisor(ctx)
    if not sup.running():
        print("nothing is running (./stack up starts the stack)")
        return
    print(f"{'SERVICE':<22} {'STATE':<9} {'PID':>7}  {'UPTIME':>8}  ADDRESS")
    for p in sup.rpc.getAllProcessInfo():
        up_s = max(0, p["now"] - p["start"]) if p["statename"] == "RUNNING" else 0
        address = SERVICES[p["group"]].port(ctx) if p["group"] in SERVICES else ""
        print(f"{p['name']:<22} {p['statename']:<9} {p['pid'] or '':>7}  {up_s:>7}s  {address}")


def logs(ctx: Context, name: str, follow: bool, lines: int) -> None:
    files = sorted((ctx.state / "logs").glob(f"{name}*.log"))
    files = [f for f in files if f.stem == name or f.stem.startswith(name + "_")]
    if not files:
        raise SystemExit(f"stack: no logs for {name!r} in {ctx.state / 'logs'}")
    os.execvp("tail", ["tail", "-n", str(lines), *(["-F"] if follow else []), *map(str, files)])


def control(ctx: Context, verb: str, names: list[str]) -> None:
    sup = Supervisor(ctx)
    if not sup.running():
        raise SystemExit("stack: nothing is running (./stack up first)")
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise SystemExit(f"stack: no such service {unknown[0]!r} (known: {', '.join(SERVICES)})")
    for service in (SERVICES[n] for n in names):
        if verb in ("stop", "restart"):
            ctx.log(f"stopping {service.name}")
            sup.rpc.stopProcessGroup(service.name, True)
        if verb in ("start", "restart"):
            start_and_wait(ctx, sup, service)


def trino_cli(ctx: Context, args: list[str]) -> None:
    from native.services.trino import TrinoService

    trino = TrinoService()
    jar, java = trino.install_cli(ctx), trino.java(ctx) / "bin" / "java"
    server = f"{ctx['TRINO_HOST']}:{ctx['TRINO_PORT']}"
    argv = [
        str(java),
        "--enable-native-access=ALL-UNNAMED",
        "-jar",
        str(jar),
        "--server",
        server,
        "--catalog",
        "postgresql",
        "--schema",
        "analytics",
    ]
    os.execv(str(java), argv + args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="./stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    p_up = sub.add_parser("up", help="start services (all by default) and wait until healthy")
    p_up.add_argument("services", nargs="*")
    p_up.add_argument("-d", "--detach", action="store_true", help="accepted for compose habits; always detached")
    p_down = sub.add_parser("down", help="stop everything")
    p_down.add_argument("-v", "--volumes", action="store_true", help="also delete the stack's data")
    sub.add_parser("ps", help="list processes")
    p_logs = sub.add_parser("logs", help="show a service's output")
    p_logs.add_argument("service")
    p_logs.add_argument("-f", "--follow", action="store_true")
    p_logs.add_argument("-n", "--tail", type=int, default=100)
    sub.add_parser("test", help="run every test tier (unit, integration, e2e); any pytest options")
    sub.add_parser("trino-cli", help="Trino's SQL console against the running Trino (any trino CLI options)")
    for verb in ("start", "stop", "restart"):
        sub.add_parser(verb, help=f"{verb} services").add_argument("services", nargs="+")
    if argv and argv[0] == "trino-cli":  # every later word is the CLI's own (--execute, --output-format...)
        trino_cli(Context(), argv[1:])
    if argv and argv[0] == "test":  # every later word is pytest's own (-v, -k EXPR, a path...)
        python = Context().python
        os.execv(str(python), [str(python), "-m", "pytest", *argv[1:]])  # pyproject's testpaths: every tier
    args = parser.parse_args(argv)
    ctx = Context()
    if args.verb == "up":
        up(ctx, args.services)
    elif args.verb == "down":
        down(ctx, args.volumes)
    elif args.verb == "ps":
        ps(ctx)
    elif args.verb == "logs":
        logs(ctx, args.service, args.follow, args.tail)
    else:
        control(ctx, args.verb, args.services)


if __name__ == "__main__":
    main(sys.argv[1:])
