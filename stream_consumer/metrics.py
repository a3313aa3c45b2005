"""The consumer's Prometheus metrics (served by common.metrics.MetricsServer with /healthz)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsumerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("stream_consumer_events", "Events committed to the streaming tables", registry=r)
        self.duplicates = Counter(
            "stream_consumer_duplicate_events",
            "Events not counted: their user's event_id was counted before, within CONSUMER_DEDUP_WINDOW_SECONDS",
            registry=r,
        )
        self.suppressed = Counter(
            "stream_consumer_suppressed_events",
            "Events and profiles of deleted users dropped (streaming.deleted_users): all their later ones with "
            "--suppress, else those appended before the deletion (a replay); not dead letters",
            registry=r,
        )
        self.messages = Counter(
            "stream_consumer_messages", "Messages committed (events, profiles and dead letters)", registry=r
        )
        self.dead_letters = Counter(
            "stream_consumer_dead_letters", "Messages filed as dead letters", ["reason"], registry=r
        )
        self.batch_messages = Histogram(
            "stream_consumer_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "stream_consumer_commit_seconds",
            "Seconds to commit one batch (its Postgres transactions, retries included)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.fenced = Counter(
            "stream_consumer_fenced_batches", "Batches rolled back because another member moved the offsets", registry=r
        )
        self.split = Counter(
            "stream_consumer_split_batches", "Batches Postgres refused for their data and that were split", registry=r
        )
        self.rebalances = Counter(
            "stream_consumer_rebalances", "Partition assignments changed (assign, revoke, lost)", ["kind"], registry=r
        )
        self.stalled = Gauge(
            "stream_consumer_stalled",
            "1 while stalled: a Postgres error that no message caused, or a stored offset outside the log",
            registry=r,
        )
        self.refused_partitions = Gauge(
            "stream_consumer_refused_partitions",
            "Partitions not read: their stored offset is outside the log",
            registry=r,
        )
        self.partitions_owned = Gauge("stream_consumer_partitions_owned", "Partitions this member reads", registry=r)
        self.last_commit = Gauge(
            "stream_consumer_last_commit_timestamp_seconds", "Unix time of the last committed batch", registry=r
        )
        for kind in ("assign", "revoke", "lost"):
            self.rebalances.labels(kind)
