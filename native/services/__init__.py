"""The native services, in start order. Each runs one service of docker-compose.yml (or a few), from
its declaration there (native/compose.py)."""

from __future__ import annotations

from native.services.airflow import AirflowService
from native.services.apps import CollectorService, KafkaProducerService, StreamConsumerService
from native.services.base import Service
from native.services.kafka import KafkaService
from native.services.postgres import PostgresService
from native.services.prometheus import PrometheusService
from native.services.superset import SupersetService
from native.services.trino import TrinoService

SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        PostgresService(),
        KafkaService(),
        StreamConsumerService(),
        KafkaProducerService(),
        CollectorService(),
        AirflowService(),
        TrinoService(),
        SupersetService(),
        # after every service it scrapes
        PrometheusService(),
    )
}
