"""docker-compose.yml's Airflow settings, read by Airflow's own configuration code (the Airflow that
native mode installs: the version the compose image runs): the metadata URL from its `_CMD`, with a
user and password full of URL delimiters, and the one `[api] secret_key` of .env."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import quote

import yaml

from native.context import ROOT, Context
from tests.unit.test_compose import AIRFLOW_SERVICES, COMPOSE_FILE, HOSTILE_PASSWORD, dotenv, interpolate

READ = """
import json
from airflow.configuration import conf
print(json.dumps({
    "conn": conf.get("database", "sql_alchemy_conn"),
    "conn_async": conf.get("database", "sql_alchemy_conn_async"),
    "secret_key": conf.get("api", "secret_key"),
}))
"""


def airflow_venv() -> Path:
    """The virtualenv `./stack up airflow` uses, installed if missing (once per machine)."""
    return Context().venv("airflow", ROOT / "airflow" / "requirements.lock.txt")


def test_airflow_reads_the_compose_metadata_url_and_secret_key(tmp_path):
    venv = airflow_venv()
    env = {**dotenv(), "AIRFLOW_DB_USER": "air:flow@", "AIRFLOW_DB_PASSWORD": HOSTILE_PASSWORD}
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    environments = {
        json.dumps({k: str(v) for k, v in interpolate(raw["services"][s]["environment"], env).items()}, sort_keys=True)
        for s in AIRFLOW_SERVICES
    }
    url = f"postgresql+psycopg://{quote('air:flow@', safe='')}:{quote(HOSTILE_PASSWORD, safe='')}@postgres:5432/"
    for environment in map(json.loads, environments):
        result = subprocess.run(
            [str(venv / "bin" / "python"), "-c", READ],
            env={**environment, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        read = json.loads(result.stdout.splitlines()[-1])
        assert read["conn"] == read["conn_async"] == url + env["AIRFLOW_DB"]
        assert read["secret_key"] == env["AIRFLOW_SECRET_KEY"]
