"""What anonymous visitors are answered (issue 18): the saved queries at every level of the request,
and nothing internal in the answers (no SQL, no Trino or Postgres error text, no catalog or schema
names), while the admin keeps the full answers. Requests come from addresses of their own
(X-Forwarded-For, as the tunnel sets it), so that the per-address limits never mix tests."""

from __future__ import annotations

import copy
import itertools
import json
import re
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from native.context import Context
from tests.support.superset_api import SupersetClient, dashboard_request

TOP_USERS = "Top users by total activity"
TIMELINE = "Real-time event timeline (events per minute)"
#: Nothing of these in an anonymous answer: SQL (as Superset writes it), and the catalogs and schemas
#: the data lives in, qualifying a name or on their own.
NAMES = ("analytics", "streaming", "postgresql", "prometheus", "kafka")
INTERNAL = re.compile(r"\bSELECT\s|(?i:\b(?:analytics|streaming|postgresql|prometheus|kafka)\.)")

_addresses = (f"192.0.2.{i % 250 + 1}" if i < 250 else f"2001:db8:1::{i:x}" for i in itertools.count())


class Visitor(SupersetClient):
    """An anonymous client at an address of its own."""

    def request(self, method, path, body=None, expect=None, headers=None):
        return super().request(method, path, body, expect, {"X-Forwarded-For": next(_addresses), **(headers or {})})


def chart_data(client: SupersetClient, body: dict) -> tuple[int, object]:
    return client.request("POST", "/api/v1/chart/data", body, expect=None)


def answered(status: int, payload: object) -> bool:
    return status == 200 or (isinstance(payload, dict) and "result" in payload)


def text(payload: object) -> str:
    return payload if isinstance(payload, str) else json.dumps(payload)


def internal(payload: object) -> list[str]:
    """SQL and qualified names in the text, and any value that is a catalog or schema name alone."""

    def values(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from values(v)
        elif isinstance(node, list):
            for v in node:
                yield from values(v)
        elif isinstance(node, str):
            yield node

    return INTERNAL.findall(text(payload)) + [v for v in values(payload) if v.lower() in NAMES]


# --- 1. saved queries only, at every level ------------------------------------------------------


def _query_result_type(body, ids):
    body["queries"][0]["result_type"] = "samples"  # the case: the dataset's raw rows


def _query_datasource(body, ids):
    body["queries"][0]["datasource"] = {"id": ids[TIMELINE], "type": "table"}  # another dataset


def _datasource_type(body, ids):
    body["datasource"]["type"] = "query"  # a saved SQL Lab query by the same id


def _x_axis(body, ids):
    body["form_data"]["x_axis"] = "total_clicks"  # read by Superset: it regroups the query


def _extras(body, ids):
    body["queries"][0]["extras"]["transpile_to_dialect"] = True


def _deprecated_where(body, ids):
    body["queries"][0]["where"] = "1 = 1"  # a deprecated field Superset still moves into extras


CHANGES = {
    "query-result-type-samples": _query_result_type,
    "query-datasource": _query_datasource,
    "datasource-type": _datasource_type,
    "form-data-x-axis": _x_axis,
    "extras-key": _extras,
    "deprecated-where": _deprecated_where,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_anonymous_request_changing_a_field_to_dict_leaves_out_is_refused(change, base, dashboard, charts):
    body = dashboard_request(charts[TOP_USERS], dashboard["id"])
    CHANGES[change](body, {title: c["datasource_id"] for title, c in charts.items()})
    status, payload = chart_data(Visitor(base), body)
    assert not answered(status, payload), (status, payload)


def test_the_saved_request_itself_is_still_answered(base, dashboard, charts):
    status, payload = chart_data(Visitor(base), dashboard_request(charts[TOP_USERS], dashboard["id"]))
    assert status == 200 and "data" in payload["result"][0]


READ_KEYS = [
    "annotation_layers", "applied_time_extras", "apply_fetch_values_predicate", "columns", "extras",
    "granularity", "group_others_when_limit_reached", "is_rowcount", "is_timeseries", "metrics", "order_desc",
    "orderby", "post_processing", "result_type", "row_offset", "series_columns", "series_limit",
    "series_limit_metric", "time_offsets", "time_shift", "datasource",
]  # fmt: skip
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1, 10**6),
    st.sampled_from(["samples", "query", "drill_detail", "1 year ago", "user", "count(*)", "P1D"]),
    st.lists(st.sampled_from(["user", "total_events", "count"]), max_size=2),
    st.just({"id": 1, "type": "table"}),
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(key=st.sampled_from(READ_KEYS), value=VALUES)
def test_real_superset_refuses_a_changed_key_of_a_query(key, value, base, dashboard, charts):
    """A sample of the unit tier's property, through the real Superset: any key Superset reads in a
    query, set to another value, is never answered (refused by Superset's own validation, 400, or
    the public view, 403; a query's own datasource makes Superset 6.1 fail, 500)."""
    body = dashboard_request(charts[TOP_USERS], dashboard["id"])
    saved = copy.deepcopy(body["queries"][0])
    body["queries"][0][key] = value
    if key in saved and json.dumps(saved[key], sort_keys=True) == json.dumps(value, sort_keys=True):
        return  # not a change
    status, payload = chart_data(Visitor(base), body)
    assert not answered(status, payload), (key, value, status, text(payload)[:300])


# --- 2. nothing internal in the answers -------------------------------------------------------------


def test_anonymous_chart_answers_carry_no_sql_nor_catalog_or_schema(base, dashboard, charts, produced):
    answers = {title: chart_data(Visitor(base), dashboard_request(c, dashboard["id"])) for title, c in charts.items()}
    assert {title: status for title, (status, _) in answers.items()} == {title: 200 for title in charts}
    leaks = {title: internal(payload) for title, (_, payload) in answers.items()}
    assert leaks == {title: [] for title in charts}


def test_admin_still_gets_the_sql_it_ran(superset, dashboard, charts):
    status, payload = chart_data(superset, dashboard_request(charts[TOP_USERS], dashboard["id"]))
    assert status == 200 and "SELECT" in payload["result"][0]["query"].upper()


def test_anonymous_dashboard_datasets_carry_no_sql_catalog_or_schema(base, superset, dashboard):
    path = f"/api/v1/dashboard/{dashboard['id']}/datasets"
    status, payload = Visitor(base).request("GET", path)
    admin = superset.request("GET", path)[1]["result"]
    assert status == 200 and len(payload["result"]) == len(admin) and internal(payload) == []
    assert any("SELECT" in (d.get("sql") or "").upper() for d in admin)  # the admin keeps them


def test_anonymous_dashboard_page_and_charts_carry_no_sql(base, dashboard):
    visitor = Visitor(base)
    page = visitor.request("GET", f"/superset/dashboard/{dashboard['slug']}/", headers={"Accept": "text/html"})
    charts = visitor.request("GET", f"/api/v1/dashboard/{dashboard['id']}/charts")
    assert (page[0], charts[0]) == (200, 200)
    assert internal(page[1]) == [] and internal(charts[1]) == []


@pytest.fixture
def timeline_source_revoked(stack, env):
    """The timeline's source table unreadable by Trino's Postgres role for the test: every query on
    it fails in Postgres, through Trino, with their own error text."""
    dsn, role = stack.owner_dsn(), env["TRINO_DB_USER"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'REVOKE SELECT ON streaming.event_minutes FROM "{role}"')
    try:
        # past Superset's cache of the live dataset and the replay of answers
        time.sleep(max(int(env.get("SUPERSET_DATA_CACHE_TIMEOUT", "10")), 2) + 3)
        yield
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'GRANT SELECT ON streaming.event_minutes TO "{role}"')


def test_a_failed_query_answers_the_visitor_a_reference_and_logs_the_error(
    timeline_source_revoked, base, superset, dashboard, charts, env
):
    body = dashboard_request(charts[TIMELINE], dashboard["id"])
    # The replay may still hold the chart's data from before the revoke: it answers with it once
    # more while it asks again beside (public_cache: data is replayed stale, failures are not).
    deadline = time.monotonic() + 20
    while True:
        status, payload = chart_data(Visitor(base), body)
        if status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    admin_status, admin_payload = chart_data(superset, {**body, "force": True})
    reference = payload.get("reference") if isinstance(payload, dict) else None
    log = (Context(env).state / "logs" / "superset.log").read_text(errors="replace")
    logged = [line for line in log.splitlines() if reference and reference in line]
    assert (status, admin_status) == (400, 400) and reference, (status, payload)
    assert internal(payload) == [] and "permission denied" not in text(payload).lower()
    assert "permission denied" in text(admin_payload).lower()  # the admin sees the cause
    assert logged and "permission denied" in logged[0].lower()  # and so does the log, by reference
