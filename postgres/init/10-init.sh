#!/usr/bin/env bash
# Creates the least-privilege roles, the metadata databases and the `streaming` schema.
#
# Run on every start by compose's postgres-init job (this folder is mounted at /init; it connects
# over TCP to the postgres service, PGHOST/PGPORT) and by the native `./stack up postgres`, with the
# same environment (.env) in both. Safe to run again: every statement is idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Wait for the server to accept TCP connections: on a new volume the postgres image first runs a
# temporary server on its Unix socket only (initdb), then restarts; a healthcheck may pass in
# between. Up to POSTGRES_INIT_WAIT seconds (default 60), then fail with pg_isready's answer.
wait_for_postgres() {
  local deadline=$((SECONDS + ${POSTGRES_INIT_WAIT:-60})) answer
  until answer="$(pg_isready -h "${PGHOST:-127.0.0.1}" -p "${PGPORT:-5432}" -d "$POSTGRES_DB" -t 2 2>&1)"; do
    if ((SECONDS >= deadline)); then
      echo "postgres-init: Postgres at ${PGHOST:-127.0.0.1}:${PGPORT:-5432} not accepting connections after ${POSTGRES_INIT_WAIT:-60} s: $answer" >&2
      return 1
    fi
    sleep 1
  done
}
wait_for_postgres

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
