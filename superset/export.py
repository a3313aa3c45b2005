"""Writes the dashboards of a running Superset back into superset/dashboards/ (the bundle bootstrap.sh
imports), after a change made in the UI: review the diff, commit it.

    python superset/export.py [SLUG...]     # default: every dashboard already in the bundle

Reads SUPERSET_PORT, SUPERSET_ADMIN_USER, SUPERSET_ADMIN_PASSWORD from the environment or .env.
The database URI is written back as the committed one (compose's host names), never as it runs.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import yaml
from dotenv import dotenv_values

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "dashboards"
COMMITTED_URI = "trino://superset@trino:8083/postgresql"


class _Dumper(yaml.SafeDumper):
    """Superset's YAML, with multi-line strings (the datasets' SQL) as literal blocks: readable diffs."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def tidy(text: str) -> str:
    return yaml.dump(yaml.safe_load(text), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def settings() -> dict[str, str]:
    """`.env` with the environment on top, parsed as everything else parses it (python-dotenv, which
    Superset's venv and the project's .venv both have; common.settings.env_file_values is not
    importable from Superset's venv, which lacks pydantic-settings)."""
    env = {k: v for k, v in dotenv_values(HERE.parent / ".env").items() if v is not None}
    env.update(os.environ)
    return env


def request(url: str, token: str | None = None, body: dict | None = None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as resp:
        return resp.read()


def main(slugs: list[str]) -> None:
    env = settings()
    base = f"http://127.0.0.1:{env['SUPERSET_PORT']}"
    login = {"username": env["SUPERSET_ADMIN_USER"], "password": env["SUPERSET_ADMIN_PASSWORD"], "provider": "db"}
    token = json.loads(request(f"{base}/api/v1/security/login", body=login))["access_token"]
    if not slugs:
        slugs = [yaml.safe_load(p.read_text())["slug"] for p in sorted((BUNDLE / "dashboards").glob("*.yaml"))]
    ids = [json.loads(request(f"{base}/api/v1/dashboard/{slug}", token))["result"]["id"] for slug in slugs]
    query = urllib.parse.quote(f"!({','.join(map(str, ids))})")
    archive = zipfile.ZipFile(io.BytesIO(request(f"{base}/api/v1/dashboard/export/?q={query}", token)))
    for sub in ("databases", "datasets", "charts", "dashboards"):
        shutil.rmtree(BUNDLE / sub, ignore_errors=True)
    for name in archive.namelist():
        # drop the archive's dashboard_export_<time>/ folder and the instance's ids from file names
        relative = Path(*Path(name).parts[1:])
        relative = relative.with_name(re.sub(r"_\d+\.yaml$", ".yaml", relative.name))
        text = archive.read(name).decode()
        if relative.name == "metadata.yaml":
            # imported as an asset bundle (overwrite in place); no timestamp, so an export of an
            # unchanged dashboard is no diff
            text = "version: 1.0.0\ntype: assets\n"
        elif relative.parts[0] == "databases":
            config = yaml.safe_load(text)
            config["sqlalchemy_uri"] = COMMITTED_URI
            text = tidy(yaml.safe_dump(config, sort_keys=False))
        else:
            text = tidy(text)
        (BUNDLE / relative).parent.mkdir(parents=True, exist_ok=True)
        (BUNDLE / relative).write_text(text)
    print(f"export: wrote {len(archive.namelist())} files of {', '.join(slugs)} to {BUNDLE}")


if __name__ == "__main__":
    main(sys.argv[1:])
