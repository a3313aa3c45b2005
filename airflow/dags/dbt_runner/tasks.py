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


#: the tests that read whole marts and sources (models/marts/<mart>.yml): analytics_reconciliation runs them
RECONCILIATION = "tag:reconciliation"


def dbt_build(outlet_events=None) -> dict:
    """`dbt build`: every model, then its tests, in dependency order; the reconciliations, whose
    cost grows with history, run in their own DAG."""
    try:
        nodes = run_dbt(["build", "--exclude", RECONCILIATION], "build")
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


def reconcile_marts() -> dict:
    """`dbt test` of the reconciliations: every mart's totals against its source's."""
    try:
        nodes = run_dbt(["test", "--select", RECONCILIATION], "reconciliation")
    except DbtTestFailure as exc:
        raise AirflowFailException(str(exc)) from exc
    return {uid: r["status"] for uid, r in nodes.items()}
