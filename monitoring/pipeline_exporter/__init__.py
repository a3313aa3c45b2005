"""The pipeline exporter: what the stream consumer cannot truthfully report about itself.

Consumer lag from Kafka's end offsets against the offsets stored in Postgres, freshness by
ingestion time, and Airflow's DAG runs; measured at scrape time, so a value is never older than
the scrape that carries it. Also Alertmanager's log receiver (`POST /alerts`).
"""
