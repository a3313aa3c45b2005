"""The second public dashboard, "Product analytics": its six charts read through Superset and Trino
equal the marts (and, for active users now, the consumer's own table) they draw; the page drawn in
headless Chromium for an anonymous visitor; and a click in the demo shop shows up in active users
now at once, then in the funnel after the next scheduled build. The page as a visitor sees it is
saved to artifacts/product-analytics.png."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.support.browser import chromium, click, drained, render_dashboard, tracker
from tests.support.ephemeral import ARTIFACTS
from tests.support.pipeline_waits import query, wait_for, wait_for_marts
from tests.support.superset_api import PRODUCT_SLUG, SupersetClient, chart_data_as_visitor, dashboard_request

ACTIVE = "Active users now (last 5 minutes)"
DAU = "Daily active users"
FUNNEL = "Purchase funnel (view, click, purchase within 30 minutes)"
RETENTION = "Retention by cohort (share active N days after the first day)"
PAGES = "Top pages (by views)"
SOURCES = "Traffic sources by conversion (first touch of each session)"
VIZ = {
    ACTIVE: "big_number_total",
    DAU: "echarts_timeseries_line",
    FUNNEL: "funnel",
    RETENTION: "heatmap_v2",
    PAGES: "table",
    SOURCES: "table",
}
#: A client address of its own: the public view's limits count per address.
VISITOR = {"X-Forwarded-For": "203.0.113.19"}
#: How long a chart and its mart may disagree: a scheduled build may land between the two reads.
SETTLE = 150


@pytest.fixture(scope="module")
def product(superset) -> dict:
    return superset.dashboard(PRODUCT_SLUG)


@pytest.fixture(scope="module")
def product_charts(superset) -> dict[str, dict]:
    return superset.charts(PRODUCT_SLUG)


@pytest.fixture(scope="module")
def visitor(env) -> SupersetClient:
    return SupersetClient(f"http://127.0.0.1:{env['SUPERSET_PORT']}")


def as_visitor(visitor: SupersetClient, product: dict, chart: dict) -> list[dict]:
    """The chart's rows as the public dashboard page asks for them (its saved request)."""
    return chart_data_as_visitor(visitor, dashboard_request(chart, product["id"]), VISITOR)


def rows(stack, sql: str, params: tuple = ()) -> list[tuple]:
    return query(stack.owner_dsn(), sql, params)


def agree(read_chart, read_mart, what: str) -> None:
    """Until the chart and the mart, read one after the other, say the same (a scheduled build that
    lands between the two reads changes the mart under the chart)."""
    seen: dict = {}

    def same() -> bool:
        seen["chart"], seen["mart"] = read_chart(), read_mart()
        return seen["chart"] == seen["mart"]

    wait_for(same, SETTLE, f"{what}: chart {seen.get('chart')} against mart {seen.get('mart')}", interval=3)


def test_product_dashboard_has_its_six_charts_public_and_refreshing(superset, product, product_charts):
    assert product["dashboard_title"] == "Product analytics" and product["published"]
    assert {title: chart["viz_type"] for title, chart in product_charts.items()} == VIZ
    assert json.loads(product["json_metadata"])["refresh_frequency"] == 10
    assert [r["name"] for r in product["roles"]] == ["Public"]


def test_active_users_now_equals_the_consumers_count(stack, visitor, product, product_charts):
    agree(
        lambda: as_visitor(visitor, product, product_charts[ACTIVE])[0]["active_users"],
        lambda: rows(stack, "SELECT active_users FROM streaming.active_users_now")[0][0],
        "active users now",
    )


def test_daily_active_users_chart_equals_the_mart(stack, superset, product_charts):
    def chart():
        return sorted(
            (dt.datetime.fromtimestamp(r["activity_date"] / 1000, dt.UTC).date(), r["active_users"], r["new_users"])
            for r in superset.chart_data(product_charts[DAU])
        )

    sql = "SELECT activity_date, active_users, new_users FROM analytics.daily_active_users"
    agree(chart, lambda: sorted(rows(stack, sql)), "daily active users")


def test_funnel_chart_equals_the_purchase_funnel_mart(stack, superset, product_charts):
    def chart():
        return sorted((int(r["step"].split(".")[0]), r["users"]) for r in superset.chart_data(product_charts[FUNNEL]))

    def mart():
        return sorted(
            rows(stack, "SELECT step_number, users FROM analytics.funnel_conversion WHERE funnel = 'purchase'")
        )

    agree(chart, mart, "the purchase funnel")


def test_retention_heatmap_equals_the_last_30_days_of_cohorts(stack, superset, product_charts):
    def chart():
        return sorted(
            (r["cohort"], r["day_number"], round(r["retention"], 6))
            for r in superset.chart_data(product_charts[RETENTION])
        )

    def mart():
        return sorted(
            (str(d), n, round(float(r), 6))
            for d, n, r in rows(
                stack,
                "SELECT cohort_date, day_number, retention FROM analytics.retention_cohorts"
                " WHERE cohort_date >= current_date - 30",
            )
        )

    agree(chart, mart, "retention by cohort")


def test_top_pages_chart_lists_the_ten_pages_of_most_views(stack, superset, product_charts):
    def chart():
        return [(r["page"], r["views"], r["users"]) for r in superset.chart_data(product_charts[PAGES])]

    def mart():
        # the dataset shows a page longer than 80 characters cut to 79 and an ellipsis
        label = "CASE WHEN length(page) > 80 THEN substr(page, 1, 79) || '…' ELSE page END"
        return rows(stack, f"SELECT {label} AS p, views, users FROM analytics.top_pages ORDER BY 2 DESC, 1 LIMIT 10")

    agree(chart, mart, "top pages")


def test_sources_chart_ranks_first_touches_by_converted_sessions(stack, superset, product_charts):
    def chart():
        got = superset.chart_data(product_charts[SOURCES])
        return [(r["converted_sessions"], r["sessions"]) for r in got], {
            (r["source"], r["medium"], r["campaign"], r["sessions"], r["converted_sessions"]) for r in got
        }

    def mart():
        ranked = rows(
            stack,
            "SELECT source, medium, campaign, sessions, converted_sessions FROM analytics.traffic_sources"
            " ORDER BY converted_sessions DESC, sessions DESC",
        )
        cut = ranked[:15]
        # rows tied with the 15th on both sort keys may be shown in its place
        tied = {r for r in ranked if cut and (r[4], r[3]) == (cut[-1][4], cut[-1][3])}
        return [(r[4], r[3]) for r in cut], tied | set(cut)

    def same() -> bool:
        (order, shown), (expected_order, allowed) = chart(), mart()
        return order == expected_order and shown <= allowed

    wait_for(same, SETTLE, "traffic sources: the chart's rows and order against the mart", interval=3)


def test_a_shop_click_shows_in_active_users_now_then_after_a_build_in_the_funnel(
    stack, env, visitor, product, product_charts
):
    shop = f"http://127.0.0.1:{env['COLLECTOR_PORT']}/shop/"
    with chromium() as driver:
        driver.get(shop)  # the page view: the funnel's first step
        wait_for(lambda: drained(driver), 30, "the page view to be acknowledged", interval=0.2)
        user_id, _ = tracker(driver)
        click(driver, 3, "click")
        wait_for(lambda: drained(driver), 30, "the click to be acknowledged", interval=0.2)

    def active_ids() -> set[int]:
        recent = "SELECT user_id FROM streaming.user_last_seen WHERE last_seen_at >= now() - interval '5 minutes'"
        return {u for (u,) in rows(stack, recent)}

    wait_for(lambda: user_id in active_ids(), 30, f"visitor {user_id} among the active users")
    agree(
        lambda: as_visitor(visitor, product, product_charts[ACTIVE])[0]["active_users"],
        lambda: len(active_ids()),
        "active users now with the visitor",
    )

    def furthest() -> int | None:
        sql = "SELECT furthest_step FROM analytics.funnel_progress WHERE funnel = 'purchase' AND user_id = %s"
        got = rows(stack, sql, (user_id,))
        return got[0][0] if got else None

    wait_for_marts(lambda: furthest() == 2, f"visitor {user_id} at the funnel's click step")

    def clicked() -> int:
        steps = as_visitor(visitor, product, product_charts[FUNNEL])
        return sum(r["users"] for r in steps if r["step"].startswith("2."))

    agree(
        clicked,
        lambda: rows(
            stack, "SELECT users FROM analytics.funnel_conversion WHERE funnel = 'purchase' AND step_number = 2"
        )[0][0],
        "the funnel's click step with the visitor",
    )


def test_product_dashboard_draws_every_chart_for_an_anonymous_visitor(env, product_charts):
    url = f"http://127.0.0.1:{env['SUPERSET_PORT']}/superset/dashboard/{PRODUCT_SLUG}/"
    with chromium() as driver:
        seen = render_dashboard(driver, url, len(product_charts), ARTIFACTS / "product-analytics.png")
    assert (seen["charts"], seen["loading"], seen["errors"]) == (len(product_charts), 0, [])
    assert "/login" not in seen["url"] and "Product analytics" in seen["page_title"]
