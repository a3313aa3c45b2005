"""The exporter's settings: the shared ones (Kafka, Postgres) plus its own, from the environment and .env."""

from __future__ import annotations

from psycopg.conninfo import make_conninfo

from common.settings import Port, Settings


class ExporterSettings(Settings):
    pipeline_exporter_host: str = "127.0.0.1"
    pipeline_exporter_port: Port = 9109
    #: the monitoring role: pg_monitor plus SELECT on streaming.consumer_offsets, nothing else
    monitor_db_user: str = "monitor"
    monitor_db_password: str = ""
    #: Airflow's API (compose: http://airflow-apiserver:8080); empty: derived from AIRFLOW_PORT
    airflow_api_url: str = ""
    airflow_port: Port = 8080
    airflow_monitor_user: str = "monitor"
    airflow_monitor_password: str = ""

    def monitor_dsn(self) -> str:
        return make_conninfo(
            host=self.postgres_host,
            port=self.postgres_port,
            dbname=self.postgres_db,
            user=self.monitor_db_user,
            password=self.monitor_db_password,
            application_name="pipeline_exporter",
            connect_timeout=3,
        )

    def airflow_url(self) -> str:
        return self.airflow_api_url or f"http://127.0.0.1:{self.airflow_port}"
