"""Where dbt is and where it writes: from the environment both modes give Airflow.

docker compose sets these in docker-compose.yml (x-airflow), native mode in
native/services/airflow.py; the defaults fit a checkout (tests, a DagBag import).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class DbtSettings:
    executable: str
    project_dir: Path
    profiles_dir: Path
    target_path: Path
    log_path: Path

    @classmethod
    def from_env(cls) -> DbtSettings:
        env = os.environ
        project = Path(env.get("DBT_PROJECT_DIR") or REPO / "dbt_project")
        return cls(
            executable=env.get("DBT_EXECUTABLE") or shutil.which("dbt") or "dbt",
            project_dir=project,
            profiles_dir=Path(env.get("DBT_PROFILES_DIR") or project),
            # Never inside the project: its folder is read-only in compose and kept clean natively.
            target_path=Path(env.get("DBT_TARGET_PATH") or "/tmp/rt-analytics-dbt/target"),
            log_path=Path(env.get("DBT_LOG_PATH") or "/tmp/rt-analytics-dbt/logs"),
        )


def mart_names(settings: DbtSettings | None = None) -> list[str]:
    """The marts (models/marts/*.sql), read from the files: no dbt call while a DAG file is parsed."""
    settings = settings or DbtSettings.from_env()
    return sorted(p.stem for p in (settings.project_dir / "models" / "marts").glob("*.sql"))
