"""Operations on the whole stack: the dashboard's lag and freshness panels stay true while the
consumer is down (lag from Kafka's end offsets, measured by the pipeline exporter and read through
Prometheus and Trino; freshness from when events were stored), and Prometheus has Airflow's runs.

The outage is one for the module: the consumer is stopped, events are produced, the panels read,
and the consumer started again and caught up before the next module's tests.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

from tests.e2e.test_dashboard import FRESHNESS, LAG
from tests.support.known_events import event, produce
from tests.support.pipeline_waits import wait_for

EVENTS = 500


@dataclass
class Outage:
    lag_before: int
    lag_after: int
    freshness_before: float | None
    freshness_after: float | None


@pytest.fixture(scope="module")
def outage(stack, env, superset) -> Outage:
    charts = superset.charts()

    def lag() -> int:
        return int(superset.chart_data(charts[LAG])[0]["lag"] or 0)

    def freshness() -> float | None:
        seconds = superset.chart_data(charts[FRESHNESS])[0]["seconds_since_last_stored"]
        return None if seconds is None else float(seconds)

    now = dt.datetime.now(dt.UTC)
    # something stored before the outage, also when this module runs alone
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_TOPIC"], [event(9_700_000, "view", str(uuid.uuid4()), now)])
    wait_for(lambda: freshness() is not None and lag() == 0, 90, "the consumer to store an event before the outage")
    stack("stop", "stream_consumer")
    try:
        lag_before, freshness_before = lag(), freshness()
        session = str(uuid.uuid4())
        produce(
            env["KAFKA_BOOTSTRAP_SERVERS"],
            env["KAFKA_TOPIC"],
            [event(9_700_001 + i % 20, "view", session, now) for i in range(EVENTS)],
        )
        lag_after = wait_for(
            lambda: (n := lag()) >= lag_before + EVENTS and n, 90, "the lag panel to count the events produced"
        )
        yield Outage(lag_before, lag_after, freshness_before, freshness())
    finally:
        stack("start", "stream_consumer")
        wait_for(lambda: lag() == 0, 120, "the consumer to catch up after the outage", interval=2)


def test_lag_panel_counts_the_events_produced_while_the_consumer_is_down(outage):
    assert outage.lag_after - outage.lag_before == EVENTS


def test_freshness_panel_keeps_growing_while_the_consumer_is_down(outage):
    """Events arriving in Kafka do not make it fresh: only storing them does."""
    assert outage.freshness_before is not None and outage.freshness_after is not None
    assert outage.freshness_after > outage.freshness_before


def prometheus_value(env: dict[str, str], promql: str) -> float:
    url = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        result = json.loads(resp.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_prometheus_has_the_dbt_dags_runs_and_their_durations(env):
    """From Airflow's REST API, by the pipeline exporter: the runs the scheduler made on its own."""
    promql = 'sum(pipeline_airflow_dag_run_duration_seconds_count{dag_id="analytics_dbt_build"})'
    runs = wait_for(
        lambda: prometheus_value(env, promql),
        150,
        "Prometheus to see a finished analytics_dbt_build run",
    )
    assert runs >= 1
