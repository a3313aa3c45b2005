"""The dashboard's event-type charts stay readable whatever types arrive (issue 18: 3,000 made-up
types filled the timeline's legend, 93 pages): the pie, the timeline and the dashboard's event type
filter show the 8 types of most events by name and every other type as one "Other", which the
datasets' SQL computes (superset/dashboards/datasets/Trino/), and no event is lost from their sums.

Fifty made-up types are produced straight to Kafka (as any producer may; the public collector
refuses undeclared types), with 1 to 50 events each: the busiest of them outrank the other modules'
rarer types, so both ranking and grouping are checked. Each chart is compared with the top 8 and
Other computed here from Postgres. The anonymous visitor's requests are the dashboard's saved ones.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Mapping

import pytest

from tests.support.known_events import event, produce
from tests.support.pipeline_waits import query, wait_for, wait_for_marts
from tests.support.superset_api import (
    SupersetClient,
    chart_data_as_visitor,
    dashboard_request,
    filter_values_request,
    series_totals,
)

EVENT_TYPES = "Event type distribution"
TIMELINE = "Real-time event timeline (events per minute)"
EVENT_TYPE_FILTER = "NATIVE_FILTER-event_type"
#: the types each chart names; the rest are summed as OTHER (no event type can be: lower case only)
TOP = 8
OTHER = "Other"
NEW_TYPES = 50
#: a documentation address of its own (test_public_view.py uses 198.51.100.0/24)
VISITOR = {"X-Forwarded-For": "203.0.113.18"}

HOUR_SQL = """
    SELECT event_type, sum(event_count) FROM streaming.event_minutes
    WHERE minute >= date_trunc('minute', now()) - interval '59 minutes' AND minute <= now()
    GROUP BY event_type
"""


def bounded(counts: Mapping[str, int]) -> Counter:
    """The datasets' rule: the TOP types of most events (ties by name) and the sum of the others."""
    ranked = sorted(((t, n) for t, n in counts.items() if n), key=lambda tn: (-tn[1], tn[0]))
    out = Counter(dict(ranked[:TOP]))
    if len(ranked) > TOP:
        out[OTHER] = sum(n for _, n in ranked[TOP:])
    return out


@pytest.fixture(scope="module")
def new_types(stack, env) -> dict[str, int]:
    """NEW_TYPES made-up event types, the i-th with i events, stored by the consumer and in the
    marts of a dbt build."""
    dsn = stack.owner_dsn()
    run = uuid.uuid4().hex[:8]
    counts = {f"made_up_{run}_{i:02d}": i for i in range(1, NEW_TYPES + 1)}
    now = dt.datetime.now(dt.UTC)
    events = [
        event(9_300_000 + i, kind, str(uuid.uuid4()), now - dt.timedelta(milliseconds=10 * k))
        for i, (kind, n) in enumerate(counts.items())
        for k in range(n)
    ]
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_TOPIC"], events)

    def stored(table: str) -> dict[str, int]:
        rows = query(
            dsn,
            f"SELECT event_type, sum(event_count) FROM {table} WHERE event_type LIKE %s GROUP BY 1",
            (f"made_up_{run}_%",),
        )
        return {t: int(n) for t, n in rows}

    wait_for(lambda: stored("streaming.event_minutes") == counts, 60, "the consumer to count the new types")
    wait_for_marts(lambda: stored("analytics.event_type_distribution") == counts, "the marts to have the new types")
    return counts


@pytest.fixture(scope="module")
def anonymous(env) -> SupersetClient:
    return SupersetClient(f"http://127.0.0.1:{env['SUPERSET_PORT']}")


def all_time(stack) -> Counter:
    return Counter(
        {
            t: int(n)
            for t, n in query(
                stack.owner_dsn(), "SELECT event_type, event_count FROM analytics.event_type_distribution"
            )
        }
    )


def test_the_pie_shows_the_top_types_and_other_with_every_event(stack, superset, charts, new_types):
    rows = superset.chart_data(charts[EVENT_TYPES])
    got = Counter({r["event_type"]: int(r["events"]) for r in rows})
    expected = bounded(all_time(stack))
    assert len(rows) <= TOP + 1 and OTHER in got
    assert got == expected


def test_the_timeline_shows_the_top_types_of_its_hour_and_other_with_every_event(stack, superset, charts, new_types):
    """The hour slides with the clock: the chart and Postgres are read again until both were read
    within one minute."""
    for _ in range(3):
        minute = int(time.time() // 60)
        rows = superset.chart_data(charts[TIMELINE])
        expected = bounded(Counter({t: int(n) for t, n in query(stack.owner_dsn(), HOUR_SQL)}))
        if minute == int(time.time() // 60):
            break
    got = series_totals(rows)
    assert len(got) <= TOP + 1 and OTHER in got and len(rows) <= 60
    assert got == expected


def test_the_event_type_filter_offers_the_top_types_and_other_to_the_visitor(stack, superset, anonymous, new_types):
    rows = chart_data_as_visitor(anonymous, filter_values_request(superset.dashboard(), EVENT_TYPE_FILTER), VISITOR)
    assert {r["event_type"] for r in rows} == set(bounded(all_time(stack)))


def test_the_event_type_filter_set_to_other_narrows_the_timeline_to_it(stack, superset, charts, anonymous, new_types):
    """The filter's column is the pie's; the timeline, in its scope, has the same values: Other too."""
    chosen = [{"col": "event_type", "op": "IN", "val": [OTHER]}]
    body = dashboard_request(charts[TIMELINE], superset.dashboard()["id"], chosen)
    rows = chart_data_as_visitor(anonymous, body, VISITOR)
    assert {k for row in rows for k in row} == {"minute", OTHER}
    assert series_totals(rows)[OTHER] >= sum(new_types.values()) - sum(sorted(new_types.values())[-TOP:])
