"""
### analytics_reconciliation

Every ten minutes, `dbt test --select tag:reconciliation`: each mart's totals against its
source's (`reconciles_with_source` in `dbt_project/models/marts/marts.yml`), over every key the
mart's last build saw. They read both sides whole, so their cost grows with history; kept out of
the every-minute build, whose cost then follows only what changed. A mart that drifted from its
source fails the run, red in the grid, and fires the `MartsDriftedFromSource` alert; it does not
retry (the data would not change).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG
from dbt_runner import tasks

with DAG(
    dag_id="analytics_reconciliation",
    description="dbt tests reconciling every mart with its source, every ten minutes",
    schedule="*/10 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=8),
    is_paused_upon_creation=False,
    default_args={
        "owner": "analytics",
        "retries": 1,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(minutes=5),
    },
    tags=["dbt", "analytics", "monitoring"],
    doc_md=__doc__,
):
    PythonOperator(task_id="reconcile_marts", python_callable=tasks.reconcile_marts)
