"""The pipeline exporter against a real Kafka broker and Postgres: lag is Kafka's end offsets minus
the offsets stored in Postgres, whether or not a consumer runs; freshness is when the consumer last
stored a batch; and its database role can read that and nothing more."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from native.context import merged_env
from tests.integration.pipeline_harness import PARTITIONS, Pipeline
from tests.support.ephemeral import ARTIFACTS, ROOT, free_port

EVENTS = 3_000


class Exporter:
    """`python -m monitoring.pipeline_exporter` for one test's topics and group."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.port = free_port()
        env = {**pipeline.env, "PIPELINE_EXPORTER_PORT": str(self.port), "AIRFLOW_PORT": str(free_port())}
        self.log = ARTIFACTS / "logs" / f"pipeline_exporter_{pipeline.group}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitoring.pipeline_exporter"],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"the exporter did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def scrape(self) -> dict[str, dict[tuple, float]]:
        """{metric name: {sorted label items: value}} of one scrape."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=20) as resp:
            text = resp.read().decode()
        out: dict[str, dict[tuple, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def total(self, name: str, **labels: str) -> float:
        return sum(v for k, v in self.scrape().get(name, {}).items() if labels.items() <= dict(k).items())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def exporter(pipeline):
    e = Exporter(pipeline)
    yield e
    e.close()


def test_lag_counts_every_message_produced_while_no_consumer_runs(pipeline, exporter):
    pipeline.produce(EVENTS, profiles=False)
    assert exporter.total("pipeline_consumer_lag_messages", topic=pipeline.topic) == EVENTS


def test_lag_is_reported_for_every_partition_of_both_topics(pipeline, exporter):
    series = exporter.scrape()["pipeline_consumer_lag_messages"]
    mine = {(dict(k)["topic"], dict(k)["partition"]) for k in series if dict(k)["group"] == pipeline.group}
    assert mine == {(t, str(p)) for t in (pipeline.topic, pipeline.profiles_topic) for p in range(PARTITIONS)}


def test_lag_falls_to_zero_once_the_consumer_stored_everything(pipeline, exporter):
    pipeline.produce(EVENTS)
    pipeline.start_consumer()
    pipeline.wait_until_consumed()
    assert exporter.total("pipeline_consumer_lag_messages", group=pipeline.group) == 0


def test_lag_keeps_growing_after_the_consumer_stops(pipeline, exporter):
    pipeline.produce(1_000, profiles=False)
    consumer = pipeline.start_consumer()
    pipeline.wait_until_consumed()
    consumer.terminate()
    consumer.wait(timeout=30)
    pipeline.produce(EVENTS, profiles=False)
    assert exporter.total("pipeline_consumer_lag_messages", topic=pipeline.topic) == EVENTS


def test_freshness_is_the_age_of_the_last_stored_batch(pipeline, exporter):
    pipeline.produce(1_000, profiles=False)
    consumer = pipeline.start_consumer()
    pipeline.wait_until_consumed()
    consumer.terminate()
    consumer.wait(timeout=30)
    ((stored_at,),) = pipeline.query(
        "SELECT extract(epoch FROM clock_timestamp() - max(updated_at)) FROM streaming.consumer_offsets "
        "WHERE consumer_group = %s AND next_offset > 0",
        pipeline.group,
    )
    freshness = exporter.total("pipeline_data_freshness_seconds", group=pipeline.group)
    assert float(stored_at) <= freshness < float(stored_at) + 30


def test_the_monitoring_role_cannot_change_the_offsets(pipeline):
    """Read-only twice over: SELECT is its only grant, and its sessions are read-only."""
    env = merged_env()
    dsn = psycopg.conninfo.make_conninfo(pipeline.dsn, user=env["MONITOR_DB_USER"], password=env["MONITOR_DB_PASSWORD"])
    refused = (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)
    with psycopg.connect(dsn) as conn, pytest.raises(refused):
        conn.execute("DELETE FROM streaming.consumer_offsets")
