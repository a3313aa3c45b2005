"""An HTTP endpoint standing in for ALERT_WEBHOOK_URL, for the whole stack the tiers share
(tests/conftest.py: `whole_stack`)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    """An HTTP endpoint standing in for ALERT_WEBHOOK_URL: keeps every notification posted to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alertnames(self, status: str) -> set[str]:
        return {a["labels"]["alertname"] for n in self.received for a in n["alerts"] if a["status"] == status}
