"""python -m monitoring.pipeline_exporter: serve the pipeline's metrics until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from monitoring.pipeline_exporter.airflow import AirflowClient
from monitoring.pipeline_exporter.collector import PipelineCollector
from monitoring.pipeline_exporter.server import exporter_server
from monitoring.pipeline_exporter.settings import ExporterSettings


def load() -> ExporterSettings:
    """Settings, or one line per bad variable on stderr and exit status 2, as the other programs do."""
    try:
        return ExporterSettings()
    except ValidationError as exc:
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper()
            print(f"error: invalid setting {name}={err.get('input')!r}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    s = load()
    from monitoring.pipeline_exporter.sources import KafkaOffsets, StoredOffsets

    registry = CollectorRegistry()
    airflow = AirflowClient(s.airflow_url(), s.airflow_monitor_user, s.airflow_monitor_password)
    registry.register(
        PipelineCollector(
            KafkaOffsets(s.kafka_bootstrap_servers, [s.kafka_topic, s.kafka_profiles_topic]),
            StoredOffsets(s.monitor_dsn(), s.kafka_consumer_group),
            airflow,
        )
    )
    server = exporter_server(registry)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = s.pipeline_exporter_port
    if server.start(s.pipeline_exporter_host, range(port, port + 1)) is None:
        raise SystemExit(f"error: PIPELINE_EXPORTER_PORT {port} is taken on {s.pipeline_exporter_host}")
    airflow.start(stop)
    logging.getLogger("pipeline_exporter").info(
        "serving http://%s:%s/metrics (group %s, Airflow %s)",
        s.pipeline_exporter_host,
        s.pipeline_exporter_port,
        s.kafka_consumer_group,
        s.airflow_url(),
    )
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
