"""The live dashboard: every chart's numbers through Superset's API (which queries Trino), the page
drawn in headless Chromium, the public read-only view, and a provisioning that can run again."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal

import pytest

from native.context import Context
from native.services.superset import SupersetService
from tests.support.browser import chromium, login, render_dashboard
from tests.support.ephemeral import ARTIFACTS, ROOT
from tests.support.superset_api import DASHBOARD_SLUG, PRODUCT_SLUG, SupersetClient, series_totals

TOP_USERS = "Top users by total activity"
EVENT_TYPES = "Event type distribution"
CONVERSION = "Purchase conversion rate by user (top 15, purchases per view)"
TIMELINE = "Real-time event timeline (events per minute)"
ENGAGEMENT = "User engagement (top 10 by sessions)"
FRESHNESS = "Data freshness (s since events were last stored)"
LAG = "Consumer lag (messages)"
TOTAL = "Total events (dbt)"
#: the type charts' row (pie) and series (timeline) of every type past the 8 of most events
OTHER = "Other"


def rounded(value: Decimal, places: int) -> float:
    """Postgres's round(): halves away from zero."""
    return float(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def by_type(rows: list[dict], key: str, value: str) -> Counter:
    return Counter({r[key]: int(r[value]) for r in rows})


def grew_by_named_type(before: Counter, after: Counter) -> Counter:
    """What each event type the chart names after the test's events grew by. The type charts name
    the 8 types of most events and sum the rest as Other (test_type_charts.py): a type named after
    but not before had no events before only if the chart had no Other then."""
    assert OTHER not in before, "more than 8 event types before the test's events: growth per type unknown"
    return +Counter({t: n - before[t] for t, n in after.items() if t != OTHER})


def produced_of_named_types(known: Counter, after: Counter) -> Counter:
    """The test's events of each type the chart names after them (each other type is in Other)."""
    assert set(known) <= set(after) or OTHER in after
    return Counter({t: n for t, n in known.items() if t in after})


def test_dashboard_has_the_reference_charts_and_refreshes_itself(superset):
    dashboard = superset.dashboard()
    assert dashboard["dashboard_title"] == "Real-Time Behavioral Analytics"
    assert 10 <= json.loads(dashboard["json_metadata"])["refresh_frequency"] <= 30
    assert {TOP_USERS, EVENT_TYPES, CONVERSION, TIMELINE, ENGAGEMENT, FRESHNESS, LAG} <= set(superset.charts())


def test_total_events_chart_grew_by_the_events_produced(produced):
    grew = produced.after[TOTAL][0]["total_events"] - (produced.before[TOTAL][0]["total_events"] or 0)
    assert grew == len(produced.known.events)


def test_top_users_chart_ranks_the_test_users_first_with_their_totals(produced):
    top = [(int(r["user"]), int(r["total_events"])) for r in produced.after[TOP_USERS][:5]]
    assert top == [(u.user_id, u.total) for u in produced.known.users]


def test_event_type_pie_grew_by_the_events_produced_of_each_type(produced):
    before = by_type(produced.before[EVENT_TYPES], "event_type", "events")
    after = by_type(produced.after[EVENT_TYPES], "event_type", "events")
    assert grew_by_named_type(before, after) == produced_of_named_types(produced.known.by_type, after)


def test_conversion_chart_shows_each_test_users_purchases_per_view(superset, produced):
    rows = superset.chart_data(
        superset.charts()[CONVERSION], [{"col": "user_id", "op": "IN", "val": produced.known.user_ids}]
    )
    got = {int(r["user"]): r["purchase_conversion_rate"] for r in rows}
    assert got == {u.user_id: rounded(u.purchases / Decimal(u.views), 4) for u in produced.known.users}


def test_engagement_chart_shows_each_test_users_sessions(superset, produced):
    rows = superset.chart_data(
        superset.charts()[ENGAGEMENT], [{"col": "user_id", "op": "IN", "val": produced.known.user_ids}]
    )
    got = {
        r["user_id"]: (
            r["session_count"],
            r["avg_events_per_session"],
            r["avg_session_duration_seconds"],
            r["session_conversion_rate"],
            r["revenue"],
        )
        for r in rows
    }
    assert got == {u.user_id: (2, round(u.total / 2, 2), 25.0, 0.5, u.revenue) for u in produced.known.users}


def test_timeline_grew_by_the_events_produced_of_each_type(produced):
    before, after = series_totals(produced.before[TIMELINE]), series_totals(produced.after[TIMELINE])
    assert grew_by_named_type(before, after) == produced_of_named_types(produced.known.by_type, after)


def test_freshness_and_lag_show_a_caught_up_consumer(superset, produced):
    charts = superset.charts()
    freshness = superset.chart_data(charts[FRESHNESS])[0]["seconds_since_last_stored"]
    lag = superset.chart_data(charts[LAG])[0]["lag"]
    assert 0 <= freshness <= time.time() - produced.produced_at + 1
    assert lag == 0


def test_dashboard_draws_every_chart_for_an_anonymous_visitor(env, superset, produced):
    url = f"http://127.0.0.1:{env['SUPERSET_PORT']}/superset/dashboard/{DASHBOARD_SLUG}/"
    charts = len(superset.charts())
    with chromium() as driver:
        seen = render_dashboard(driver, url, charts, ARTIFACTS / "dashboard.png")
    assert (seen["charts"], seen["loading"], seen["errors"]) == (charts, 0, [])
    assert "/login" not in seen["url"] and "Real-Time Behavioral Analytics" in seen["page_title"]


def test_dashboard_draws_every_chart_for_the_admin(env, superset, produced):
    base = f"http://127.0.0.1:{env['SUPERSET_PORT']}"
    charts = len(superset.charts())
    with chromium() as driver:
        login(driver, base, env["SUPERSET_ADMIN_USER"], env["SUPERSET_ADMIN_PASSWORD"])
        seen = render_dashboard(
            driver, f"{base}/superset/dashboard/{DASHBOARD_SLUG}/", charts, ARTIFACTS / "dashboard-admin.png"
        )
    assert (seen["charts"], seen["loading"], seen["errors"]) == (charts, 0, [])


def anonymous_status(base: str, path: str, body: dict | None = None) -> tuple[int, str]:
    """Status and final URL of a request without a session (redirects followed)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.url
    except urllib.error.HTTPError as err:
        return err.code, err.url


@pytest.mark.parametrize(
    "path",
    [
        "/sqllab/",
        "/explore/?slice_id=1",
        "/superset/slice/1/",
        "/dashboard/new/",
        "/databaseview/list/",
        "/api/v1/dataset/",
        "/api/v1/database/",
        "/api/v1/chart/1",
        "/api/v1/sqllab/execute/",
        "/users/list/",
    ],
)
def test_anonymous_visitor_is_refused_everything_but_the_dashboard(env, path):
    base = f"http://127.0.0.1:{env['SUPERSET_PORT']}"
    body = {"database_id": 1, "sql": "SELECT 1"} if "execute" in path else None
    status, url = anonymous_status(base, path, body)
    assert status in (400, 401, 403, 404, 405) or "/login/" in url, (status, url)


def test_anonymous_visitor_sees_only_the_public_dashboards(env):
    base = f"http://127.0.0.1:{env['SUPERSET_PORT']}"
    anonymous = SupersetClient(base)
    for slug in (DASHBOARD_SLUG, PRODUCT_SLUG):
        assert anonymous.request("GET", f"/superset/dashboard/{slug}/", expect=None)[0] == 200
    assert sorted(d["slug"] for d in anonymous.get("/api/v1/dashboard/")["result"]) == [PRODUCT_SLUG, DASHBOARD_SLUG]


def test_anonymous_browser_is_sent_to_login_from_sql_lab_and_the_chart_editor(env):
    base = f"http://127.0.0.1:{env['SUPERSET_PORT']}"
    with chromium() as driver:
        for path in ("/sqllab/", "/explore/?slice_id=1"):
            driver.get(base + path)
            time.sleep(2)
            assert "/login/" in driver.current_url, (path, driver.current_url)


def test_running_the_bootstrap_again_duplicates_nothing(env, superset):
    def inventory() -> dict[str, int]:
        return {
            kind: superset.get(f"/api/v1/{kind}/", page_size=100)["count"]
            for kind in ("dashboard", "chart", "dataset", "database")
        }

    before = inventory()
    service_env = SupersetService().env(Context(env))
    proc = subprocess.run(
        ["bash", str(ROOT / "superset" / "bootstrap.sh")],
        env={**os.environ, **service_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert inventory() == before
