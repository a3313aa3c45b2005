"""The consumer's Prometheus metrics and its health, served over HTTP (`/metrics`, `/healthz`).

A registry of its own per process: tests start several consumers in one interpreter's children,
and nothing here depends on prometheus_client's global default registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("stream_consumer")


class ConsumerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("stream_consumer_events", "Events committed to the streaming tables", registry=r)
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


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/healthz` (200, or 503 with the reason) on one port."""

    def __init__(self, metrics: ConsumerMetrics, health: Callable[[], tuple[bool, str]]) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.startswith("/metrics"):
                    status, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    ok, why = health()
                    status, body, ctype = (200 if ok else 503), (why + "\n").encode(), "text/plain; charset=utf-8"
                else:
                    status, body, ctype = 404, b"not found: try /metrics or /healthz\n", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every few seconds are not news
                pass

        self.handler = Handler
        self.server: ThreadingHTTPServer | None = None

    def start(self, host: str, ports: range) -> int | None:
        """Serves on the first free port of `ports` (member k of N takes the k-th); None if all are taken."""
        for port in ports:
            try:
                self.server = ThreadingHTTPServer((host, port), self.handler)
            except OSError:
                continue
            self.server.daemon_threads = True
            threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True).start()
            return port
        log.warning("metrics and /healthz not served: ports %d-%d are all taken", ports.start, ports.stop - 1)
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
