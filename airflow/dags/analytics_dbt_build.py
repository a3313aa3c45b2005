"""
### analytics_dbt_build

Every minute, `dbt build` of `dbt_project/`: the staging views and the marts in schema `analytics`
from the `streaming` tables the consumer writes, each model followed by its tests.

- One task for the whole build (see README.md, "Transformations": per-model tasks cost more CPU
  than the build itself on a 2-core machine). Each mart is an asset of the task: the Assets view
  shows every model's refreshes, with its status, seconds and rows; the task log has dbt's
  per-model lines.
- A failing dbt test fails the run at once (no retry: the data would not change); any other
  failure is retried once. A run may not outlast its minute.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.python import PythonOperator
from dbt_runner import tasks
from dbt_runner.dags import analytics_dag

with analytics_dag(
    "analytics_dbt_build",
    description="dbt build (models + tests) of the analytics marts, every minute",
    schedule="* * * * *",
    dagrun_timeout=timedelta(seconds=58),
    execution_timeout=timedelta(seconds=45),
    retry_delay=timedelta(seconds=3),
    tags=["dbt", "analytics"],
    doc_md=__doc__,
):
    PythonOperator(task_id="dbt_build", python_callable=tasks.dbt_build, outlets=tasks.mart_assets())
