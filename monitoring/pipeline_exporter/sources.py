"""The exporter's two readers of offsets: Kafka's end offsets and the offsets stored in Postgres."""

from __future__ import annotations

import psycopg
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from monitoring.pipeline_exporter.lag import StoredOffset, TopicPartition, Watermarks


class KafkaOffsets:
    """Start and end offsets of every partition of the topics, read with the admin API (two
    ListOffsets requests for all partitions; no consumer group is joined, nothing is committed)."""

    def __init__(self, bootstrap: str, topics: list[str], timeout: float = 3.0) -> None:
        self.topics = topics
        self.timeout = timeout
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})

    def watermarks(self) -> dict[TopicPartition, Watermarks]:
        meta = self.admin.list_topics(timeout=self.timeout).topics
        partitions = [
            KafkaTopicPartition(topic, p) for topic in self.topics if topic in meta for p in meta[topic].partitions
        ]
        if not partitions:
            return {}
        offsets: dict[TopicPartition, dict[str, int]] = {}
        for name, spec in (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest())):
            futures = self.admin.list_offsets({tp: spec for tp in partitions}, request_timeout=self.timeout)
            for tp, future in futures.items():
                offsets.setdefault((tp.topic, tp.partition), {})[name] = future.result(timeout=self.timeout).offset
        return {tp: Watermarks(o["low"], o["high"]) for tp, o in offsets.items()}


class StoredOffsets:
    """streaming.consumer_offsets of one consumer group, read as the monitoring role (SELECT only)."""

    QUERY = """
        SELECT topic, "partition", next_offset, extract(epoch FROM updated_at)::float8,
               extract(epoch FROM clock_timestamp())::float8
        FROM streaming.consumer_offsets WHERE consumer_group = %s
    """

    def __init__(self, dsn: str, group: str) -> None:
        self.dsn = dsn
        self.group = group
        self.conn: psycopg.Connection | None = None

    def read(self) -> tuple[dict[TopicPartition, StoredOffset], float]:
        """The group's rows and Postgres' clock at the same instant (freshness compares the two
        timestamps of one clock, never this machine's against the database's)."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
        try:
            rows = self.conn.execute(self.QUERY, (self.group,)).fetchall()
            row = self.conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            assert row is not None  # a SELECT without FROM: one row
            now = row[0]
        except psycopg.Error:
            self.conn.close()
            raise
        return {(t, p): StoredOffset(n, u) for t, p, n, u, _ in rows}, now
