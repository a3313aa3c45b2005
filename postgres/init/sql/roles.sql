-- One login role per stage; passwords come from .env through psql variables.
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', r.name, r.password)
FROM (VALUES (:'consumer_user', :'consumer_password'),
             (:'dbt_user', :'dbt_password'),
             (:'trino_user', :'trino_password'),
             (:'superset_user', :'superset_password'),
             (:'airflow_user', :'airflow_password'),
             (:'monitor_user', :'monitor_password')) AS r(name, password)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name)
\gexec

-- Passwords follow .env on every run, so a changed secret takes effect on the next start.
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', r.name, r.password)
FROM (VALUES (:'consumer_user', :'consumer_password'),
             (:'dbt_user', :'dbt_password'),
             (:'trino_user', :'trino_password'),
             (:'superset_user', :'superset_password'),
             (:'airflow_user', :'airflow_password'),
             (:'monitor_user', :'monitor_password')) AS r(name, password)
\gexec

-- Superset's and Airflow's metadata live in databases of their own, owned by their roles.
SELECT format('CREATE DATABASE %I OWNER %I', d.name, d.owner)
FROM (VALUES (:'superset_db', :'superset_user'), (:'airflow_db', :'airflow_user')) AS d(name, owner)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d.name)
\gexec

-- Nobody but the owner creates objects in public.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SELECT format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', :'db') \gexec

-- Monitoring (the postgres exporter, the pipeline exporter): Postgres' statistics views through
-- pg_monitor, read-only; grants.sql adds SELECT on streaming.consumer_offsets and nothing else.
SELECT format('GRANT pg_monitor TO %I', :'monitor_user') \gexec
ALTER ROLE :"monitor_user" SET default_transaction_read_only = on;
ALTER ROLE :"monitor_user" SET statement_timeout = '5s';

-- dbt runs ~70 short queries a minute: JIT compiling each costs more (~0.3 s) than it saves,
-- and its aggregates over sessions sort in memory with more than the default 4 MB.
ALTER ROLE :"dbt_user" SET jit = off;
ALTER ROLE :"dbt_user" SET work_mem = '64MB';
