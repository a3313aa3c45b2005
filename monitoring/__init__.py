"""Operations: Prometheus' scrape config and alert rules (with their promtool tests), Alertmanager's
routing, the postgres exporter's queries and the pipeline exporter (lag, freshness, Airflow runs)."""
