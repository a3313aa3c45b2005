"""What every DAG in this folder shares: a DAG file states only its id, schedule, timeouts, tags
and task.

- One run at a time, never a catch-up of missed intervals, unpaused as soon as it is loaded.
- Every task belongs to `analytics` and is retried once (a failing dbt test is not: tasks.py
  fails it for good), after RETRY_DELAY unless the DAG says otherwise.
- A DAG names its run's and its task's timeouts: a run ends before the next one is due.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG

START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
RETRY_DELAY = timedelta(seconds=30)
#: every task's defaults; analytics_dag adds the DAG's retry_delay and execution_timeout
DEFAULT_ARGS = {"owner": "analytics", "retries": 1}


def analytics_dag(
    dag_id: str,
    *,
    schedule: str,
    dagrun_timeout: timedelta,
    execution_timeout: timedelta,
    retry_delay: timedelta = RETRY_DELAY,
    **kwargs,
) -> DAG:
    """A DAG with the shared settings; `kwargs` (description, tags, doc_md...) go to DAG() as is."""
    return DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=dagrun_timeout,
        is_paused_upon_creation=False,
        default_args={**DEFAULT_ARGS, "retry_delay": retry_delay, "execution_timeout": execution_timeout},
        **kwargs,
    )
