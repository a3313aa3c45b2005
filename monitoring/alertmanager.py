"""Alertmanager's configuration with the webhook of .env: python -m monitoring.alertmanager SRC DEST.

monitoring/alertmanager.yml is the log-only configuration. With ALERT_WEBHOOK_URL set, every alert
also goes to that webhook: a `webhook` receiver is added and matched first (`continue: true`), the
`log` receiver after it. Native mode calls `render` from `./stack up prometheus`; compose's
`alertmanager-init` job runs this module.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import yaml


def render(config: dict, webhook_url: str = "", log_url: str | None = None) -> dict:
    """The configuration Alertmanager runs: `config` plus the webhook (if any); `log_url` moves the
    log receiver (native mode: the pipeline exporter on loopback)."""
    out = copy.deepcopy(config)
    receivers = {r["name"]: r for r in out["receivers"]}
    if log_url:
        receivers["log"]["webhook_configs"][0]["url"] = log_url
    if webhook_url.strip():
        out["receivers"].append(
            {"name": "webhook", "webhook_configs": [{"url": webhook_url.strip(), "send_resolved": True}]}
        )
        # Every alert matches both: the webhook first (continue), then the log receiver.
        out["route"]["routes"] = [{"receiver": "webhook", "continue": True}, {"receiver": "log"}]
    return out


def write(src: Path, dest: Path, webhook_url: str, log_url: str | None = None) -> None:
    config = render(yaml.safe_load(src.read_text()), webhook_url, log_url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(
        "# Rendered from monitoring/alertmanager.yml and ALERT_WEBHOOK_URL; edit those, not this.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    # Alertmanager's image runs as nobody; the URL may carry a token, but only Alertmanager mounts it.
    tmp.chmod(0o644)
    tmp.replace(dest)


def main() -> None:
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    url = os.environ.get("ALERT_WEBHOOK_URL", "")
    write(src, dest, url)
    print(f"alertmanager: {dest} routes alerts to the log receiver" + (" and ALERT_WEBHOOK_URL" if url else ""))


if __name__ == "__main__":
    main()
