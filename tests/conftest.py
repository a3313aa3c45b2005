"""Fixtures shared by every tier."""

import time
from collections.abc import Iterator

import pytest
from hypothesis import settings

from common.settings import Settings
from native.services import SERVICES
from tests.support.alert_webhook import Webhook
from tests.support.ephemeral import ARTIFACTS, ROOT, EphemeralStack, free_port

# Property-based tests: no per-example deadline (the machine runs whole stacks beside them, and a
# slow example is not a failure), and a failure prints what reproduces it.
settings.register_profile("stack", deadline=None, print_blob=True)
settings.load_profile("stack")

__all__ = ["ARTIFACTS", "ROOT", "EphemeralStack", "free_port"]


@pytest.fixture(scope="session")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture(scope="session")
def whole_stack(webhook: Webhook) -> Iterator[EphemeralStack]:
    """The whole native stack, started once per session and shared by the tiers that need it:
    integration's test_stack.py (a second `up`, Prometheus' targets, the benchmarks of a running
    stack, an alert's way to the receivers) and the e2e tier, which stops its producer (each e2e
    test produces exactly the events it checks). One start of Airflow, Trino and Superset, not two."""
    from benchmarks import serving

    env = {
        "PRODUCER_RATE": "100",
        "PRODUCER_USERS": "50",
        "ALERT_WEBHOOK_URL": webhook.url,
        # benchmarks.serving's click measure sends an event type of its own
        "COLLECTOR_EVENT_TYPES": f"{Settings().collector_event_types},{serving.CLICK_TYPE}",
        # e2e: a batch every 100 ms at most (what its tests wait for); a hung Superset worker is
        # replaced after 20 s (test_public_view), not 60. gthread workers keep their heartbeat
        # while a request runs, so no request is cut.
        "CONSUMER_BATCH_MAX_MS": "100",
        "SUPERSET_GUNICORN_TIMEOUT": "20",
    }
    s = EphemeralStack(list(SERVICES), env)
    try:
        started = time.monotonic()
        s.up()
        print(f"\nfirst `./stack up` of the whole stack: {time.monotonic() - started:.1f} s")
        yield s
    finally:
        s.down()
