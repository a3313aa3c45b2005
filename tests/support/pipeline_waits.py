"""Waiting for the pipeline: the consumer, then a dbt build, as the end-to-end tests and the serving
benchmark see them (Postgres as the stack's owner)."""

from __future__ import annotations

import time

import psycopg

#: The end-to-end stack: every service but the producer (each test produces what it checks);
#: prometheus too: the dashboard's lag panel reads the pipeline exporter's lag through it; the
#: collector for the tracker and the demo shop (test_storefront.py).
SERVICE_NAMES = ["postgres", "kafka", "stream_consumer", "collector", "airflow", "trino", "superset", "prometheus"]


def wait_for(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def query(dsn: str, sql: str, params=None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def marts_match_streaming(dsn: str) -> bool:
    """A dbt build ran and saw every event the consumer has counted (and the consumer is caught up)."""
    try:
        ((streaming, analytics, lag),) = query(
            dsn,
            "SELECT (SELECT coalesce(sum(event_count), 0) FROM streaming.user_events),"
            " (SELECT coalesce(sum(total_events), 0) FROM analytics.user_event_summary),"
            " (SELECT coalesce(sum(high_watermark - next_offset), 0) FROM streaming.consumer_offsets)",
        )
    except psycopg.errors.UndefinedTable:  # no dbt build yet
        return False
    return streaming == analytics and lag == 0


def wait_for_marts(check, what: str) -> None:
    """Until `check` holds after a scheduled dbt build (Airflow, every minute; nobody triggers it)."""
    wait_for(check, 240, f"{what} (scheduled dbt run)", interval=2)


def marts_exist(dsn: str) -> bool:
    return bool(query(dsn, "SELECT to_regclass('analytics.user_event_summary')")[0][0])
