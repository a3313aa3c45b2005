"""`/metrics` and `/healthz` over HTTP, for the consumer and the producer (each passes a registry
of its own, not prometheus_client's global one, and a health check)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/healthz` (200, or 503 with the reason) on one port."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, str]]) -> None:
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
