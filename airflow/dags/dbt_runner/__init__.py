"""What the DAGs in this folder do: run dbt (dbt_project/) from its own virtualenv, log its output
into the task log, and turn its run_results.json into a task outcome Airflow shows per model."""
