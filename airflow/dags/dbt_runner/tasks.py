"""The tasks' callables; the DAG files only declare."""

from __future__ import annotations

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

from dbt_runner.run import DbtTestFailure, mart_events, run_dbt
from dbt_runner.settings import mart_names

SCHEMA = "analytics"


def mart_assets() -> list[Asset]:
    """One Airflow asset per mart: the Assets view shows each model's refreshes and results."""
    return [Asset(name=f"{SCHEMA}.{name}", group="dbt") for name in mart_names()]


def dbt_build(outlet_events=None) -> dict:
    """`dbt build`: every model, then its tests, in dependency order."""
    try:
        nodes = run_dbt(["build"], "build")
    except DbtTestFailure as exc:
        # A failing data test: fail the run now and visibly; a retry would fail the same way.
        raise AirflowFailException(str(exc)) from exc
    if outlet_events is not None:
        for name, result in mart_events(nodes).items():
            outlet_events[Asset(name=f"{SCHEMA}.{name}", group="dbt")].extra = result
    return {uid: r["status"] for uid, r in nodes.items()}


def source_freshness() -> dict:
    """`dbt source freshness`: fails when a `streaming` table is older than its error_after."""
    nodes = run_dbt(["source", "freshness"], "freshness")
    return {uid: r["status"] for uid, r in nodes.items()}
