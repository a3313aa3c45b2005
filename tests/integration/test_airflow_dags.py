"""The DAGs in airflow/dags load in Airflow's own DagBag (in Airflow's virtualenv, as the
dag-processor loads them) without errors, and say what the stage promises: dbt build every
minute, no catch-up, one run at a time, retries, a timeout shorter than the interval."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import pytest

from common.settings import env_file_values
from native.context import Context
from tests.support.ephemeral import ROOT

DAGS = ROOT / "airflow" / "dags"

# Runs inside Airflow's virtualenv: what the dag-processor would see (BundleDagBag puts the
# DAGs folder on sys.path, as for the `dags-folder` bundle).
LOAD = """
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag

bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=Path(sys.argv[1]))
out = {"import_errors": {k: v[-2000:] for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "file": dag.fileloc,
        "schedule": dag.timetable.expression,
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "paused_on_creation": dag.is_paused_upon_creation,
        "dagrun_timeout": dag.dagrun_timeout.total_seconds() if dag.dagrun_timeout else None,
        "tasks": {
            t.task_id: {
                "retries": t.retries,
                "execution_timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "outlets": sorted(a.name for a in t.outlets),
            }
            for t in dag.tasks
        },
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    venv = Context().venv("airflow", ROOT / "airflow" / "requirements.lock.txt")
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        # airflow/airflow.env, compose's x-airflow env_file: both modes give it to the dag-processor
        **env_file_values(ROOT / "airflow" / "airflow.env"),
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "DBT_PROJECT_DIR": str(ROOT / "dbt_project"),
    }
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", LOAD, str(DAGS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dags_import_without_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert set(dagbag["dags"]) == {"analytics_dbt_build", "analytics_reconciliation", "streaming_source_freshness"}


def test_reconciliations_run_in_their_own_dag_not_in_the_every_minute_build(dagbag):
    dag = dagbag["dags"]["analytics_reconciliation"]
    assert (dag["schedule"], dag["max_active_runs"], dag["paused_on_creation"]) == ("*/10 * * * *", 1, False)
    (task,) = dag["tasks"].values()
    assert 0 < task["execution_timeout"] < dag["dagrun_timeout"] <= timedelta(minutes=10).total_seconds()


def test_dbt_build_runs_every_minute_one_run_at_a_time(dagbag):
    dag = dagbag["dags"]["analytics_dbt_build"]
    assert dag["schedule"] == "* * * * *"
    assert (dag["catchup"], dag["max_active_runs"], dag["paused_on_creation"]) == (False, 1, False)


def test_dbt_build_retries_and_never_outlasts_its_minute(dagbag):
    dag = dagbag["dags"]["analytics_dbt_build"]
    (task,) = dag["tasks"].values()
    assert task["retries"] >= 1
    assert 0 < task["execution_timeout"] < dag["dagrun_timeout"] < timedelta(minutes=1).total_seconds()


def test_every_mart_is_an_asset_of_the_build_task(dagbag):
    marts = sorted(p.stem for p in (ROOT / "dbt_project" / "models" / "marts").glob("*.sql"))
    assert dagbag["dags"]["analytics_dbt_build"]["tasks"]["dbt_build"]["outlets"] == [f"analytics.{m}" for m in marts]


def test_dag_files_only_declare(dagbag):
    """Logic lives in the importable dbt_runner package; a DAG file is a short declaration."""
    for dag in dagbag["dags"].values():
        source = open(dag["file"]).read()
        assert "subprocess" not in source and len(source.splitlines()) < 60, dag["file"]
