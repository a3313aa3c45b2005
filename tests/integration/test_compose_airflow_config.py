"""docker-compose.yml's Airflow settings, read by Airflow's own configuration code (the Airflow that
native mode installs: the version the compose image runs): the metadata URL from its `_CMD`, with a
user and password full of URL delimiters, the one `[api] secret_key` of .env, and the settings of
airflow/airflow.env, which both modes read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import quote

import yaml

from native.compose import interpolate
from native.context import ROOT, Context
from native.services.airflow import AirflowService
from tests.unit.test_compose import (
    AIRFLOW_SERVICES,
    COMPOSE_FILE,
    HOSTILE_PASSWORD,
    container_environment,
    dotenv,
    shared_airflow_env,
)
from tests.unit.test_native_compose import stack_context

# argv[1]: the names of airflow/airflow.env; an AIRFLOW__SECTION__KEY is read as Airflow's option
READ = """
import json, os, sys
from airflow.configuration import conf

def read(name):
    if name.startswith("AIRFLOW__"):
        return conf.get(*name.lower().split("__")[1:3])
    return os.environ.get(name)

print(json.dumps({
    "conn": conf.get("database", "sql_alchemy_conn"),
    "conn_async": conf.get("database", "sql_alchemy_conn_async"),
    "secret_key": conf.get("api", "secret_key"),
    "shared": {name: read(name) for name in json.loads(sys.argv[1])},
}))
"""


def airflow_venv() -> Path:
    """The virtualenv `./stack up airflow` uses, installed if missing (once per machine)."""
    return Context().venv("airflow", ROOT / "airflow" / "requirements.lock.txt")


def read_config(environment: dict[str, str], home: Path) -> dict:
    """Airflow's configuration as a process with `environment` reads it."""
    venv = airflow_venv()
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", READ, json.dumps(sorted(shared_airflow_env()))],
        env={**environment, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "AIRFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_airflow_reads_the_compose_metadata_url_and_secret_key(tmp_path):
    env = {**dotenv(), "AIRFLOW_DB_USER": "air:flow@", "AIRFLOW_DB_PASSWORD": HOSTILE_PASSWORD}
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    # what each container gets: its env_file (airflow/airflow.env), its environment on top
    environments = {
        json.dumps(container_environment(interpolate(raw["services"][s], env)), sort_keys=True)
        for s in AIRFLOW_SERVICES
    }
    url = f"postgresql+psycopg://{quote('air:flow@', safe='')}:{quote(HOSTILE_PASSWORD, safe='')}@postgres:5432/"
    for environment in map(json.loads, environments):
        read = read_config(environment, tmp_path)
        assert read["conn"] == read["conn_async"] == url + env["AIRFLOW_DB"]
        assert read["secret_key"] == env["AIRFLOW_SECRET_KEY"]
        assert read["shared"] == shared_airflow_env()


def test_native_airflow_reads_composes_settings_on_loopback(tmp_path):
    """The environment native mode gives Airflow's processes (compose's x-airflow, translated):
    Airflow reads airflow/airflow.env's values from it, and the metadata URL from compose's _CMD,
    pointing at the local Postgres, any password kept."""
    ctx = stack_context(tmp_path, AIRFLOW_DB_USER="air:flow@", AIRFLOW_DB_PASSWORD=HOSTILE_PASSWORD)
    native = AirflowService().env(ctx)
    home = tmp_path / "home"
    home.mkdir()
    read = read_config(native, home)
    assert read["shared"] == shared_airflow_env()
    url = f"postgresql+psycopg://{quote('air:flow@', safe='')}:{quote(HOSTILE_PASSWORD, safe='')}"
    assert (
        read["conn"] == read["conn_async"] == f"{url}@{ctx['POSTGRES_HOST']}:{ctx['POSTGRES_PORT']}/{ctx['AIRFLOW_DB']}"
    )
