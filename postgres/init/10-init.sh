#!/usr/bin/env bash
# Creates the least-privilege roles, the metadata databases and the `streaming` schema.
#
# Run once on a new data directory, by the official postgres image (this folder is mounted
# at /docker-entrypoint-initdb.d) and by the native `./stack up postgres`, with the same
# environment (.env) in both. Safe to run again: every statement is idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

run_sql() {
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$1" \
    -v owner="$POSTGRES_USER" \
    -v db="$POSTGRES_DB" \
    -v consumer_user="$CONSUMER_DB_USER" -v consumer_password="$CONSUMER_DB_PASSWORD" \
    -v dbt_user="$DBT_DB_USER" -v dbt_password="$DBT_DB_PASSWORD" \
    -v trino_user="$TRINO_DB_USER" -v trino_password="$TRINO_DB_PASSWORD" \
    -v superset_user="$SUPERSET_DB_USER" -v superset_password="$SUPERSET_DB_PASSWORD" \
    -v superset_db="$SUPERSET_DB" \
    -v airflow_user="$AIRFLOW_DB_USER" -v airflow_password="$AIRFLOW_DB_PASSWORD" \
    -v airflow_db="$AIRFLOW_DB" \
    -v monitor_user="$MONITOR_DB_USER" -v monitor_password="$MONITOR_DB_PASSWORD" \
    -f "$2"
}

run_sql "$POSTGRES_DB" "$here/sql/roles.sql"
run_sql "$POSTGRES_DB" "$here/sql/streaming.sql"
run_sql "$POSTGRES_DB" "$here/sql/grants.sql"
