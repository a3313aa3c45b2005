"""`POST /alerts`, Alertmanager's log receiver, beside the exporter's `/metrics` and `/healthz`
(common.metrics.MetricsServer): every notification becomes one log line per alert (`./stack logs
prometheus`, or `docker compose logs pipeline-exporter`), so that alerts are seen with no webhook
configured."""

from __future__ import annotations

import json
import logging

from prometheus_client import CollectorRegistry, Counter

from common.metrics import MetricsServer

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


def exporter_server(registry: CollectorRegistry) -> MetricsServer:
    """The exporter's HTTP server: its metrics, a health that is its being up, and POST /alerts."""
    notifications = Counter(
        "pipeline_alert_notifications",
        "Alerts received from Alertmanager by the log receiver",
        ["alertname", "status"],
        registry=registry,
    )

    def receive(body: bytes) -> tuple[int, bytes]:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return 400, b"not JSON\n"
        for line in alert_lines(payload):
            log.warning("%s", line)
        for alert in payload.get("alerts", []):
            notifications.labels((alert.get("labels") or {}).get("alertname", "?"), alert.get("status", "?")).inc()
        return 200, b"logged\n"

    return MetricsServer(registry, lambda: (True, "ok"), post={"/alerts": receive})
