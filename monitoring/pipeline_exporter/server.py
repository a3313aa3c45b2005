"""HTTP: `GET /metrics` (Prometheus text format), `GET /healthz`, and `POST /alerts`, Alertmanager's
log receiver: every notification becomes one log line per alert (`./stack logs prometheus`, or
`docker compose logs pipeline-exporter`), so that alerts are seen with no webhook configured."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

log = logging.getLogger("pipeline_exporter")


def alert_lines(payload: dict) -> list[str]:
    """One line per alert of an Alertmanager webhook notification (its format version 4)."""
    lines = []
    for alert in payload.get("alerts", []):
        labels = dict(alert.get("labels", {}))
        name = labels.pop("alertname", "?")
        severity = labels.pop("severity", "")
        where = " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        summary = (alert.get("annotations") or {}).get("summary", "")
        status = alert.get("status", payload.get("status", "?")).upper()
        lines.append(f"ALERT {status} {name}" + (f" [{severity}]" if severity else "") + f" {where}: {summary}")
    return lines


class ExporterServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        notifications = Counter(
            "pipeline_alert_notifications",
            "Alerts received from Alertmanager by the log receiver",
            ["alertname", "status"],
            registry=registry,
        )

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
                    self._reply(200, b"ok\n")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or POST /alerts\n")

            def do_POST(self) -> None:  # noqa: N802
                if not self.path.startswith("/alerts"):
                    self._reply(404, b"not found\n")
                    return
                try:
                    payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                except ValueError:
                    self._reply(400, b"not JSON\n")
                    return
                for line in alert_lines(payload):
                    log.warning("%s", line)
                for alert in payload.get("alerts", []):
                    notifications.labels(
                        (alert.get("labels") or {}).get("alertname", "?"), alert.get("status", "?")
                    ).inc()
                self._reply(200, b"logged\n")

            def log_message(self, format: str, *args) -> None:  # scrapes every 5 s: not worth a line each
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="pipeline-exporter-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
