"""
### analytics_reconciliation

Every ten minutes, `dbt test --select tag:reconciliation`: each mart's totals against its
source's (`reconciles_with_source` in the mart's `dbt_project/models/marts/<mart>.yml`), over
every key the mart's last build saw. They read both sides whole, so their cost grows with history;
kept out of the every-minute build, whose cost then follows only what changed. A mart that drifted from its
source fails the run, red in the grid, and fires the `MartsDriftedFromSource` alert; it does not
retry (the data would not change).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.python import PythonOperator
from dbt_runner import tasks
from dbt_runner.dags import analytics_dag

with analytics_dag(
    "analytics_reconciliation",
    description="dbt tests reconciling every mart with its source, every ten minutes",
    schedule="*/10 * * * *",
    dagrun_timeout=timedelta(minutes=8),
    execution_timeout=timedelta(minutes=5),
    tags=["dbt", "analytics", "monitoring"],
    doc_md=__doc__,
):
    PythonOperator(task_id="reconcile_marts", python_callable=tasks.reconcile_marts)
