-- Least privilege: the consumer writes `streaming` only; dbt reads `streaming` and owns
-- `analytics`; Trino reads both and writes nothing.
SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I', :'db', :'consumer_user', :'dbt_user', :'trino_user') \gexec

GRANT USAGE ON SCHEMA streaming TO :"consumer_user", :"dbt_user", :"trino_user";
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA streaming TO :"consumer_user";
GRANT USAGE ON ALL SEQUENCES IN SCHEMA streaming TO :"consumer_user";
GRANT SELECT ON ALL TABLES IN SCHEMA streaming TO :"dbt_user", :"trino_user";

ALTER SCHEMA analytics OWNER TO :"dbt_user";
GRANT USAGE ON SCHEMA analytics TO :"trino_user";
-- Tables dbt creates later are readable by Trino.
ALTER DEFAULT PRIVILEGES FOR ROLE :"dbt_user" IN SCHEMA analytics GRANT SELECT ON TABLES TO :"trino_user";
ALTER ROLE :"trino_user" SET default_transaction_read_only = on;

-- Monitoring reads where the consumer resumes (lag, freshness) and the statistics views (pg_monitor).
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'monitor_user') \gexec
GRANT USAGE ON SCHEMA streaming TO :"monitor_user";
GRANT SELECT ON streaming.consumer_offsets TO :"monitor_user";
