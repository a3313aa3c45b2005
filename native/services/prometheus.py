"""Monitoring: Prometheus, Alertmanager and the postgres exporter from Debian's packages, and the
project's pipeline exporter (monitoring/pipeline_exporter), as one service of four processes.

The configuration is the repository's monitoring/ (the files compose mounts). Native mode renders
two copies into its state folder: prometheus.yml with every compose `service:port` translated as
native/compose.py translates compose's own values (127.0.0.1 and the port .env gives that
service), and alertmanager.yml with ALERT_WEBHOOK_URL. The two exporters run compose's commands
and environments, translated the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from common.settings import REPO_ROOT
from native.compose import NativeService
from native.context import Context
from native.services.apps import compose_program, settings
from native.services.base import Program, Service

MONITORING = REPO_ROOT / "monitoring"
HOST = "127.0.0.1"
#: Debian package -> (its binary, the .env variable with the compose image's tag: same version)
PACKAGES = {
    "prometheus": ("/usr/bin/prometheus", "PROMETHEUS_VERSION"),
    "prometheus-alertmanager": ("/usr/bin/prometheus-alertmanager", "ALERTMANAGER_VERSION"),
    "prometheus-postgres-exporter": ("/usr/bin/prometheus-postgres-exporter", "POSTGRES_EXPORTER_VERSION"),
}


def binary_version(binary: str) -> str:
    """`2.42.0` from `prometheus, version 2.42.0+ds (branch: debian/sid, ...)`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def consumer_targets(ctx: Context) -> list[str]:
    """Member k of CONSUMER_REPLICAS serves its metrics on CONSUMER_METRICS_PORT + k."""
    s = settings(ctx)
    return [f"{HOST}:{s.consumer_metrics_port + k}" for k in range(s.consumer_replicas)]


def native_prometheus_config(ctx: Context, declared: NativeService | None = None) -> dict:
    """monitoring/prometheus.yml with its compose addresses translated as compose's own values are
    (native/compose.py: `service:port` -> the service's native host and .env port, `localhost` is
    Prometheus itself), the consumer's members listed, and the rule files at their absolute paths
    (Prometheus reads them relative to the config file)."""
    declared = declared or ctx.compose("prometheus")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["rule_files"] = [str(MONITORING / f) for f in config.get("rule_files", [])]
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            static["targets"] = [declared.translate(t) for t in static["targets"]]
    for job in config["scrape_configs"]:
        if job.pop("dns_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": consumer_targets(ctx)}]
            continue
        for static in job.get("static_configs", []):
            static["targets"] = [declared.translate(t) for t in static["targets"]]
    return config


def _get(url: str, timeout: float = 2) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode(errors="replace") if resp.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def _scraped_once(prometheus: str, job: str) -> bool:
    """Whether Prometheus has scraped `job` successfully (its `up` sample is 1)."""
    body = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": f'up{{job="{job}"}}'}))
    try:
        return body is not None and any(r["value"][1] == "1" for r in json.loads(body)["data"]["result"])
    except (ValueError, LookupError, TypeError):  # not the API's answer
        return False


class PrometheusService(Service):
    """Owns `<state>/prometheus` (rendered configs, TSDB, Alertmanager's data) and four processes:
    Prometheus, Alertmanager, the postgres exporter and the pipeline exporter, each on its port."""

    name = "prometheus"
    # the exporters log in with the monitoring role that postgres' init scripts create
    depends_on = ("postgres",)
    start_timeout = 60

    def install(self, ctx: Context) -> None:
        missing = [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
        ctx.apt_install(*PACKAGES)
        if missing:
            self._disable_system_daemons(ctx)
        for package, (binary, var) in PACKAGES.items():
            have, want = binary_version(binary), ctx[var].lstrip("v")
            if have != want:
                raise SystemExit(
                    f"stack: Debian's {package} is {have}, but .env's {var} (compose's image) is {ctx[var]}; "
                    "make them agree"
                )

    def _disable_system_daemons(self, ctx: Context) -> None:
        """The packages' postinst may start system daemons on the default ports (9090, 9093, 9187):
        stop them and keep them from starting at boot; this stack runs its own."""
        for unit in PACKAGES:
            if Path("/run/systemd/system").exists():
                subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True)
            elif Path(f"/etc/init.d/{unit}").exists():
                subprocess.run([f"/etc/init.d/{unit}", "stop"], capture_output=True)
                subprocess.run(["update-rc.d", unit, "disable"], capture_output=True)
        ctx.log("prometheus: the Debian packages' own daemons are stopped and disabled (the stack runs its own)")

    def state(self, ctx: Context) -> Path:
        return ctx.state / "prometheus"

    def prepare(self, ctx: Context) -> None:
        from monitoring.alertmanager import write

        state = self.state(ctx)
        for d in ("data", "alertmanager"):
            (state / d).mkdir(parents=True, exist_ok=True)
        config = state / "prometheus.yml"
        config.write_text(
            "# Rendered from monitoring/prometheus.yml with this stack's ports; edit that file, not this.\n"
            + yaml.safe_dump(native_prometheus_config(ctx), sort_keys=False)
        )
        write(
            MONITORING / "alertmanager.yml",
            state / "alertmanager.yml",
            ctx.env.get("ALERT_WEBHOOK_URL", ""),
            log_url=f"http://{HOST}:{ctx['PIPELINE_EXPORTER_PORT']}/alerts",
        )

    def programs(self, ctx: Context) -> list[Program]:
        state = self.state(ctx)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        # The .env settings its rendered config came from: a change of one restarts it on the next
        # `./stack up` (see Supervisor.write_config).
        declared = ctx.compose("prometheus")
        native_prometheus_config(ctx, declared)
        rendered_from: dict[str, str] = {
            **declared.settings,
            **{k: ctx.env[k] for k in ("CONSUMER_METRICS_PORT", "CONSUMER_REPLICAS") if k in ctx.env},
        }
        exporter = ctx.compose("postgres-exporter")
        exporter_args = exporter.command()
        exporter_env = exporter.environment({"PATH": base["PATH"]})
        return [
            Program(
                name="server",
                argv=[
                    PACKAGES["prometheus"][0],
                    f"--config.file={state / 'prometheus.yml'}",
                    f"--storage.tsdb.path={state / 'data'}",
                    "--storage.tsdb.retention.time=7d",
                    f"--web.listen-address={HOST}:{ctx['PROMETHEUS_PORT']}",
                    # POST /-/reload: `./stack up` applies edited rules without a restart (loopback only)
                    "--web.enable-lifecycle",
                ],
                env=base,
                settings=rendered_from,
            ),
            Program(
                name="alertmanager",
                argv=[
                    PACKAGES["prometheus-alertmanager"][0],
                    f"--config.file={state / 'alertmanager.yml'}",
                    f"--storage.path={state / 'alertmanager'}",
                    f"--web.listen-address={HOST}:{ctx['ALERTMANAGER_PORT']}",
                    # one Alertmanager: no gossip port (its default, 9094, would be opened otherwise)
                    "--cluster.listen-address=",
                ],
                env={
                    **base,
                    "ALERTMANAGER_PORT": ctx["ALERTMANAGER_PORT"],
                    "PIPELINE_EXPORTER_PORT": ctx["PIPELINE_EXPORTER_PORT"],
                    "ALERT_WEBHOOK_URL": ctx.env.get("ALERT_WEBHOOK_URL", ""),
                },
            ),
            # compose's postgres-exporter: its command and environment, translated
            Program(
                name="postgres_exporter",
                argv=[PACKAGES["prometheus-postgres-exporter"][0], *exporter_args],
                env=exporter_env,
                settings=exporter.settings,
            ),
            compose_program(ctx, "pipeline-exporter", name="pipeline_exporter"),
        ]

    def port(self, ctx: Context) -> str:
        return f"{HOST}:{ctx['PROMETHEUS_PORT']}"

    def urls(self, ctx: Context) -> dict[str, str]:
        return {
            "prometheus": f"http://{HOST}:{ctx['PROMETHEUS_PORT']}",
            "alertmanager": f"http://{HOST}:{ctx['ALERTMANAGER_PORT']}",
            "postgres_exporter": f"http://{HOST}:{ctx['POSTGRES_EXPORTER_PORT']}",
            "pipeline_exporter": f"http://{HOST}:{ctx['PIPELINE_EXPORTER_PORT']}",
        }

    def healthy(self, ctx: Context) -> bool:
        """Prometheus and Alertmanager ready, the postgres exporter connected, the pipeline exporter
        answering a scrape and scraped by Prometheus once."""
        urls = self.urls(ctx)
        if _get(urls["prometheus"] + "/-/ready") is None or _get(urls["alertmanager"] + "/-/ready") is None:
            return False
        if _get(urls["pipeline_exporter"] + "/metrics", timeout=10) is None:
            return False
        # the dashboard's lag panel (a table of Trino's prometheus catalog) exists only once
        # Prometheus holds a sample of it
        if not _scraped_once(urls["prometheus"], "pipeline_exporter"):
            return False
        metrics = _get(urls["postgres_exporter"] + "/metrics", timeout=5) or ""
        return re.search(r"^pg_up 1(\.0)?$", metrics, re.MULTILINE) is not None

    def after_start(self, ctx: Context) -> None:
        """Reloads both configurations (rendered again by this `up`): edited rules or routes take
        effect without a restart, and nothing restarts when nothing changed."""
        urls = self.urls(ctx)
        for what in ("prometheus", "alertmanager"):
            request = urllib.request.Request(urls[what] + "/-/reload", method="POST")
            with urllib.request.urlopen(request, timeout=10):
                pass
        ctx.log(f"prometheus: UI {urls['prometheus']}, Alertmanager {urls['alertmanager']}")
