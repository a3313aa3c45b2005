"""`/metrics` and `/healthz` over HTTP, for the consumer, the producer and the pipeline exporter
(each passes a registry of its own, not prometheus_client's global one, a health check, and any
POST routes of its own)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


#: A POST route: the request body in, (status, plain-text answer) out.
PostRoute = Callable[[bytes], tuple[int, bytes]]


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/healthz` (200, or 503 with the reason) on one port,
    plus the POST routes given (path prefix -> handler)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, str]],
        post: Mapping[str, PostRoute] | None = None,
    ) -> None:
        routes = dict(post or {})

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.startswith("/metrics"):
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    ok, why = health()
                    self._reply(200 if ok else 503, (why + "\n").encode())
                else:
                    self._reply(404, b"not found: try /metrics or /healthz\n")

            def do_POST(self) -> None:  # noqa: N802
                route = next((handler for path, handler in routes.items() if self.path.startswith(path)), None)
                if route is None:
                    self._reply(404, b"not found\n")
                    return
                self._reply(*route(self.rfile.read(int(self.headers.get("Content-Length") or 0))))

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
