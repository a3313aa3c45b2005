"""What every native service sees: the merged environment, the state folder and the download cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.settings import REPO_ROOT as ROOT
from common.settings import env_file_values
from native.compose import COMPOSE_FILE, Compose, NativeService


def merged_env() -> dict[str, str]:
    """`.env` with the process environment on top, as docker compose merges them."""
    return {**env_file_values(), **os.environ}


@dataclass
class Context:
    """What every native service sees: the settings (`env`: `.env` under the process environment,
    or a test's own), the checkout, the state folder and the shared download cache, plus helpers to
    log and run commands. It holds no process; the services and the Supervisor do."""

    env: dict[str, str] = field(default_factory=merged_env)
    #: the declaration of every service (a test may give a copy of its own)
    compose_file: Path = COMPOSE_FILE

    @property
    def root(self) -> Path:
        return ROOT

    @property
    def state(self) -> Path:
        """Data, logs and sockets of this stack; tests give each run its own (STACK_STATE_DIR)."""
        return Path(self.env.get("STACK_STATE_DIR") or ROOT / ".stack").resolve()

    @property
    def cache(self) -> Path:
        """Downloads and tool virtualenvs, shared by every checkout on this machine."""
        default = Path.home() / ".cache" / "rt-analytics"
        return Path(self.env.get("STACK_CACHE_DIR") or default).resolve()

    @property
    def python(self) -> Path:
        return ROOT / ".venv" / "bin" / "python"

    def compose(self, service: str, volumes: dict[str, Path] | None = None) -> NativeService:
        """A service of docker-compose.yml as a local process of this stack runs it (native/compose.py)."""
        return Compose(self.env, self.state, self.compose_file).service(service, volumes)

    def __getitem__(self, key: str) -> str:
        try:
            return self.env[key]
        except KeyError:
            raise SystemExit(f"stack: {key} is not set (add it to .env)") from None

    def log(self, message: str) -> None:
        print(f"stack: {message}", file=sys.stderr, flush=True)

    def run(self, argv: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
        """Runs a setup command; on failure shows its output and stops with a one-line error."""
        proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"stack: {what} failed (exit {proc.returncode}): {' '.join(map(str, argv))}")
        return proc

    def apt_install(self, *packages: str) -> None:
        """Debian packages, installed once; `apt-get update` only when something is missing."""
        missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
        if not missing:
            return
        self.log(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        self.run(["apt-get", "update", "-q"], "apt-get update", env=env)
        self.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], "apt-get install", env=env)

    def venv(self, name: str, requirements: Path) -> Path:
        """A virtualenv of its own for a Python stack that conflicts with the app's (Airflow, dbt,
        Superset), built once per content of its requirements file and shared by every checkout."""
        import hashlib

        digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
        venv = self.cache / "venvs" / f"{name}-{digest}"
        if (venv / ".complete").exists():
            return venv
        self.log(f"installing {name} into {venv} from {requirements.relative_to(ROOT)} (once)")
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        self.run([sys.executable, "-m", "venv", str(venv)], f"virtualenv for {name}")
        self.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
            f"pip install for {name}",
        )
        (venv / ".complete").touch()
        self.log(f"installed {name} in {time.monotonic() - started:.0f} s")
        return venv

    def maven_fetch(self, pom: Path, marker: Path, what: str, *args: str) -> None:
        """Runs a Maven download once; `marker` appears only when it completed."""
        if marker.exists():
            return
        if not shutil.which("mvn"):
            self.apt_install("maven")
        self.log(f"downloading {what} from Maven Central (once; cached in {self.cache})")
        started = time.monotonic()
        self.run(["mvn", "-q", "-B", "-f", str(pom), *args], f"download of {what}")
        self.log(f"downloaded {what} in {time.monotonic() - started:.0f} s")


def wait_until(check, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False
