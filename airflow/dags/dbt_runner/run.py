"""Runs one dbt command as a subprocess and judges it from run_results.json.

- dbt's output goes to the task log line by line (per-model status, timings, failing tests);
- a failing dbt test fails the task without a retry (the data is wrong; running again would not
  change it), any other failure (Postgres unreachable, a killed run) raises and is retried;
- on success each mart's asset event carries its status, timing and rows (Airflow's Assets view
  shows every model's last refresh), and the per-node summary is the task's return value (XCom).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping

from dbt_runner.settings import DbtSettings

log = logging.getLogger(__name__)

#: what dbt's process gets from the task's environment: no Airflow secrets
_DROP_PREFIXES = ("AIRFLOW", "_AIRFLOW")


class DbtTestFailure(Exception):
    """dbt ran, and data tests failed."""


class DbtError(Exception):
    """dbt could not run or a node errored (connection, SQL, timeout): worth a retry."""


def dbt_env(settings: DbtSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    env.update(
        DBT_PROFILES_DIR=str(settings.profiles_dir),
        DBT_SEND_ANONYMOUS_USAGE_STATS="False",
        DO_NOT_TRACK="1",
        DBT_USE_COLORS="False",
        PYTHONUNBUFFERED="1",
    )
    return env


def dbt_command(settings: DbtSettings, command: list[str], target_subdir: str) -> list[str]:
    # One target folder per command: each keeps its own partial-parse state and run_results.json.
    return [
        settings.executable,
        *command,
        "--project-dir",
        str(settings.project_dir),
        "--profiles-dir",
        str(settings.profiles_dir),
        "--target-path",
        str(settings.target_path / target_subdir),
        "--log-path",
        str(settings.log_path),
    ]


def run_dbt(command: list[str], target_subdir: str, settings: DbtSettings | None = None) -> dict:
    """Runs `dbt <command>`; returns {node: {status, seconds, rows, message}} or raises."""
    settings = settings or DbtSettings.from_env()
    argv = dbt_command(settings, command, target_subdir)
    results_file = settings.target_path / target_subdir / "run_results.json"
    results_file.unlink(missing_ok=True)
    log.info("running %s", " ".join(argv))
    started = time.monotonic()
    # Its own process group: a timeout or a kill of the task stops dbt and its connections too.
    proc = subprocess.Popen(
        argv,
        env=dbt_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            log.info("%s", line.rstrip())
        returncode = proc.wait()
    finally:
        _stop(proc)
    elapsed = time.monotonic() - started
    nodes = summarize(results_file)
    failed_tests = sorted(n for n, r in nodes.items() if r["status"] == "fail")
    errors = sorted(n for n, r in nodes.items() if r["status"] in ("error", "runtime error"))
    if returncode != 0:
        detail = "; ".join(f"{n}: {nodes[n]['message']}" for n in (errors + failed_tests)[:10])
        if failed_tests and not errors:
            raise DbtTestFailure(
                f"dbt {command[0]}: {len(failed_tests)} test(s) failed after {elapsed:.1f} s: {detail}"
            )
        raise DbtError(f"dbt {command[0]} exited {returncode} after {elapsed:.1f} s: {detail or 'see the log above'}")
    log.info("dbt %s succeeded in %.1f s (%d nodes)", command[0], elapsed, len(nodes))
    return nodes


def summarize(results_file) -> dict:
    try:
        results = json.loads(results_file.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return {}
    return {
        r["unique_id"]: {
            "status": r["status"],
            "seconds": round(r.get("execution_time") or 0.0, 3),
            "rows": (r.get("adapter_response") or {}).get("rows_affected"),
            "message": (r.get("message") or "")[:300],
        }
        for r in results
    }


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first (dbt cancels its running queries), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def mart_events(nodes: Mapping[str, dict], project: str = "rt_analytics") -> dict[str, dict]:
    """The asset event extra for each mart dbt built: {mart name: its result}."""
    prefix = f"model.{project}."
    return {uid.removeprefix(prefix): r for uid, r in nodes.items() if uid.startswith(prefix)}
