"""End-to-end tier: the whole native stack on free ports, started once per session by `./stack up`
and shared with integration's test_stack.py (tests/conftest.py: `whole_stack`).

Postgres, Kafka, the stream consumer, the collector, Airflow (dbt every minute), Trino, Superset
and Prometheus. The producer is stopped: each test produces exactly the events it checks. Tests
share the stack, so each one checks what its own events changed (deltas, or its own user ids).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import pytest

from native.context import Context
from tests.support.ephemeral import EphemeralStack
from tests.support.known_events import KnownEvents, plan, produce
from tests.support.pipeline_waits import marts_match_streaming, query, wait_for, wait_for_marts
from tests.support.superset_api import SupersetClient


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that leaves the public budget of unsaved requests empty runs last: the others need it
    (it refills at 20 a minute; waiting for it cost half a minute). A test that checks what happened
    while the others ran runs after them."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("empties_the_public_budget") is not None,
            item.get_closest_marker("after_the_other_tests") is not None,
        )
    )


@pytest.fixture(scope="package")
def stack(whole_stack: EphemeralStack) -> EphemeralStack:
    """The session's whole stack (tests/conftest.py), without its producer."""
    # The dashboard tests' browser; installed here so that a fresh machine (CI) gets it too.
    Context().apt_install("chromium", "chromium-driver")
    whole_stack("stop", "kafka_producer")
    return whole_stack


@pytest.fixture(scope="package")
def env(stack) -> dict[str, str]:
    """The stack's settings: .env with the ephemeral ports and folders on top."""
    return Context({**Context().env, **stack.env}).env


@pytest.fixture(scope="package")
def superset(env) -> SupersetClient:
    client = SupersetClient(f"http://127.0.0.1:{env['SUPERSET_PORT']}")
    client.login(env["SUPERSET_ADMIN_USER"], env["SUPERSET_ADMIN_PASSWORD"])
    return client


# --- the known events every serving test checks ------------------------------------------------


@dataclass
class Produced:
    known: KnownEvents
    produced_at: float
    before: dict[str, list[dict]]
    after: dict[str, list[dict]]


@pytest.fixture(scope="package")
def base(env) -> str:
    """Superset's address."""
    return f"http://127.0.0.1:{env['SUPERSET_PORT']}"


@pytest.fixture(scope="module")
def dashboard(superset) -> dict:
    """The public dashboard, as the admin's API lists it."""
    return superset.dashboard()


@pytest.fixture(scope="module")
def charts(superset) -> dict[str, dict]:
    """The dashboard's charts by name (a module that needs them after its events overrides this)."""
    return superset.charts()


def chart_snapshot(superset: SupersetClient) -> dict[str, list[dict]]:
    return {title: superset.chart_data(chart) for title, chart in superset.charts().items()}


@pytest.fixture(scope="package")
def produced(stack, env, superset) -> Produced:
    """Produces a known set of events once the pipeline is settled, waits until the consumer and
    then a dbt build have them, and keeps every chart's data from before and after."""
    dsn = stack.owner_dsn()
    wait_for_marts(lambda: marts_match_streaming(dsn), "the marts to catch up with earlier events")
    before = chart_snapshot(superset)
    (above,) = query(
        dsn, "SELECT coalesce(max(t), 0) FROM (SELECT sum(event_count) t FROM streaming.user_events GROUP BY user_id) s"
    )[0]
    known = plan(first_user_id=9_000_001, above=int(above)).build(dt.datetime.now(dt.UTC))
    produced_at = time.time()
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_TOPIC"], known.events)

    def totals(table: str, column: str) -> dict[int, int]:
        rows = query(
            dsn, f"SELECT user_id, sum({column}) FROM {table} WHERE user_id = ANY(%s) GROUP BY 1", (known.user_ids,)
        )
        return {u: int(n) for u, n in rows}

    expected = {u.user_id: u.total for u in known.users}
    wait_for(lambda: totals("streaming.user_events", "event_count") == expected, 60, "the consumer to count the events")
    wait_for_marts(lambda: totals("analytics.user_event_summary", "total_events") == expected, "the marts")
    return Produced(known, produced_at, before, chart_snapshot(superset))
