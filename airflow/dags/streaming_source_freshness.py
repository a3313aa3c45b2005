"""
### streaming_source_freshness

Every ten minutes, `dbt source freshness` on the `streaming` tables (thresholds in
`dbt_project/models/staging/__sources.yml`): the run fails, red in the grid, when the consumer
has written nothing for longer than the error threshold. Kept out of the every-minute DAG so that
the build pays nothing for it.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.python import PythonOperator
from dbt_runner import tasks
from dbt_runner.dags import analytics_dag

with analytics_dag(
    "streaming_source_freshness",
    description="dbt source freshness of the streaming schema, every ten minutes",
    schedule="*/10 * * * *",
    dagrun_timeout=timedelta(minutes=5),
    execution_timeout=timedelta(minutes=2),
    tags=["dbt", "streaming", "monitoring"],
    doc_md=__doc__,
):
    PythonOperator(task_id="source_freshness", python_callable=tasks.source_freshness)
