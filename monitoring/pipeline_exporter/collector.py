"""The exporter's metrics, measured when Prometheus scrapes (a custom collector, no background loop):
a value is never older than the scrape that carries it, and a source that does not answer shows
as `pipeline_source_up{source} 0` with its metrics left out, never as its last good value."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from monitoring.pipeline_exporter.airflow import DURATION_BUCKETS, AirflowClient, consecutive_failures
from monitoring.pipeline_exporter.lag import consumer_lag, freshness_seconds
from monitoring.pipeline_exporter.sources import KafkaOffsets, StoredOffsets

log = logging.getLogger("pipeline_exporter")


class PipelineCollector(Collector):
    def __init__(self, kafka: KafkaOffsets, stored: StoredOffsets, airflow: AirflowClient | None) -> None:
        self.kafka = kafka
        self.stored = stored
        self.airflow = airflow
        self._failing: set[str] = set()

    def _read(self, source: str, read):
        """(result, seconds) of one source, or (None, seconds) when it failed (logged once per outage)."""
        started = time.monotonic()
        try:
            result = read()
            if source in self._failing:
                log.info("%s answers again", source)
                self._failing.discard(source)
        except Exception as exc:  # noqa: BLE001 - any failure of a source is reported as source_up 0
            if source not in self._failing:
                log.warning("%s did not answer: %s", source, exc)
                self._failing.add(source)
            result = None
        return result, time.monotonic() - started

    def collect(self) -> Iterator:
        up = GaugeMetricFamily("pipeline_source_up", "1 if the source answered this scrape", labels=["source"])
        took = GaugeMetricFamily(
            "pipeline_source_seconds", "Seconds this scrape took to read the source", labels=["source"]
        )
        ends, t_kafka = self._read("kafka", self.kafka.watermarks)
        stored, t_pg = self._read("postgres", self.stored.read)
        up.add_metric(["kafka"], float(ends is not None))
        up.add_metric(["postgres"], float(stored is not None))
        took.add_metric(["kafka"], t_kafka)
        took.add_metric(["postgres"], t_pg)
        group = self.stored.group

        if ends is not None:
            end = GaugeMetricFamily(
                "pipeline_kafka_end_offset",
                "Next offset Kafka will write (high watermark)",
                labels=["topic", "partition"],
            )
            for (topic, partition), marks in sorted(ends.items()):
                end.add_metric([topic, str(partition)], marks.high)
            yield end
        if stored is not None:
            rows, now = stored
            nxt = GaugeMetricFamily(
                "pipeline_consumer_next_offset",
                "Offset the group resumes from, as stored in Postgres with the aggregates",
                labels=["group", "topic", "partition"],
            )
            last = GaugeMetricFamily(
                "pipeline_consumer_last_stored_timestamp_seconds",
                "Unix time the consumer last stored a batch of the partition (consumer_offsets.updated_at)",
                labels=["group", "topic", "partition"],
            )
            for (topic, partition), row in sorted(rows.items()):
                nxt.add_metric([group, topic, str(partition)], row.next_offset)
                last.add_metric([group, topic, str(partition)], row.updated_at)
            yield nxt
            yield last
            fresh = freshness_seconds(rows, now)
            if fresh is not None:
                yield _one(
                    "pipeline_data_freshness_seconds",
                    "Seconds since the consumer last stored a batch (ingestion time, Postgres' clock)",
                    ["group"],
                    [group],
                    fresh,
                )
        if ends is not None and stored is not None:
            lag = GaugeMetricFamily(
                "pipeline_consumer_lag_messages",
                "Messages in Kafka the group has not stored yet: end offset minus the offset stored in Postgres",
                labels=["group", "topic", "partition"],
            )
            offsets = {tp: row.next_offset for tp, row in stored[0].items()}
            for (topic, partition), n in sorted(consumer_lag(ends, offsets).items()):
                lag.add_metric([group, topic, str(partition)], n)
            yield lag

        if self.airflow is not None:
            history, t_airflow = self._read("airflow", self.airflow.current)
            up.add_metric(["airflow"], float(history is not None))
            took.add_metric(["airflow"], t_airflow)
            if history is not None:
                yield from self._airflow(history)
        yield up
        yield took

    @staticmethod
    def _airflow(history) -> Iterator:
        runs = CounterMetricFamily(
            "pipeline_airflow_dag_runs", "Finished DAG runs seen by the exporter", labels=["dag_id", "state"]
        )
        failures = GaugeMetricFamily(
            "pipeline_airflow_dag_consecutive_failures",
            "Latest finished runs that failed in a row (0: the latest succeeded)",
            labels=["dag_id"],
        )
        last_ok = GaugeMetricFamily(
            "pipeline_airflow_dag_last_run_success", "1 if the latest finished run succeeded", labels=["dag_id"]
        )
        last_duration = GaugeMetricFamily(
            "pipeline_airflow_dag_last_run_duration_seconds", "Duration of the latest finished run", labels=["dag_id"]
        )
        last_end = GaugeMetricFamily(
            "pipeline_airflow_dag_last_run_end_timestamp_seconds",
            "Unix time the latest finished run ended",
            labels=["dag_id"],
        )
        durations = HistogramMetricFamily(
            "pipeline_airflow_dag_run_duration_seconds", "Durations of finished DAG runs", labels=["dag_id"]
        )
        for dag_id, h in sorted(history.items()):
            for state, n in h.runs_total.items():
                runs.add_metric([dag_id, state], n)
            buckets = [(str(b), c) for b, c in zip(DURATION_BUCKETS, h.buckets)] + [("+Inf", h.duration_count)]
            durations.add_metric([dag_id], buckets, h.duration_sum)
            failures.add_metric([dag_id], consecutive_failures(h.latest))
            if h.latest:
                newest = h.latest[0]
                last_ok.add_metric([dag_id], float(newest.state == "success"))
                if newest.duration is not None:
                    last_duration.add_metric([dag_id], newest.duration)
                if newest.end is not None:
                    last_end.add_metric([dag_id], newest.end)
        yield from (runs, failures, last_ok, last_duration, last_end, durations)


def _one(name: str, doc: str, labels: list[str], values: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family
