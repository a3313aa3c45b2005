"""The public view as the internet reaches it (issue 10): anonymous visitors run the public charts'
saved queries and nothing else, within rate and size limits; the admin keeps everything, by
session or by API token; cookies, the content security policy and redirects hold behind the tunnel.

Requests come from documentation addresses (X-Forwarded-For, which Superset trusts for one hop,
as from the tunnel), a fresh one per test, so that the per-address limits of one test never touch
another. Superset's settings are the stack's .env."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

import trino
from native.context import Context
from native.stack import Supervisor
from tests.support.browser import chromium, login
from tests.support.superset_api import SupersetClient, dashboard_request, filter_values_request

TOP_USERS = "Top users by total activity"
TIMELINE = "Real-time event timeline (events per minute)"
TOTAL = "Total events (dbt)"
EVENT_TYPE_FILTER = "NATIVE_FILTER-event_type"

_addresses = (f"198.51.100.{i}" for i in itertools.count(1))


def fresh_address() -> str:
    return next(_addresses)


def per_minute(limit: str) -> int:
    """The count of a limits string of .env ("120/minute")."""
    count, _, period = limit.partition("/")
    assert period.strip() in ("minute", "1 minute"), f"the tests read per-minute limits, not {limit!r}"
    return int(count)


class Visitor(SupersetClient):
    """An anonymous browser at its own address (as the tunnel reports it)."""

    def __init__(self, base: str, address: str | None = None) -> None:
        super().__init__(base)
        self.address = address or fresh_address()

    def request(self, method, path, body=None, expect=None, headers=None):
        return super().request(method, path, body, expect, {"X-Forwarded-For": self.address, **(headers or {})})


@pytest.fixture
def visitor(base) -> Visitor:
    return Visitor(base)


def chart_data(client: SupersetClient, body: dict) -> tuple[int, object]:
    return client.request("POST", "/api/v1/chart/data", body, expect=None)


def raw(base: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """One request, redirects not followed: (status, headers)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request(method, path, body, {"X-Forwarded-For": fresh_address(), **(headers or {})})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.headers
    finally:
        conn.close()


# --- 1. the public charts' saved queries and nothing else ---------------------------------------


def test_anonymous_visitor_gets_every_public_chart_as_the_dashboard_asks_for_it(visitor, dashboard, charts, produced):
    statuses = {title: chart_data(visitor, dashboard_request(c, dashboard["id"]))[0] for title, c in charts.items()}
    assert statuses == {title: 200 for title in charts}


def _metric(q, ctx):
    # the chart's own label, so that the chart's post-processing still finds its column
    q["metrics"] = [{"expressionType": "SQL", "sqlExpression": "count(*)*1000", "label": "total_events"}]


def _simple_metric(q, ctx):
    q["metrics"] = [{"expressionType": "SIMPLE", "column": {"column_name": "user_id"}, "aggregate": "COUNT_DISTINCT"}]


def _column(q, ctx):
    q["columns"] = [*q["columns"], "total_clicks"]


def _filter(q, ctx):
    q["filters"] = [*q["filters"], {"col": "user_id", "op": "==", "val": 1}]


def _where(q, ctx):
    q["extras"]["where"] = "user_id > 0"


def _having(q, ctx):
    q["extras"]["having"] = "sum(total_events) > 0"


def _row_limit(q, ctx):
    q["row_limit"] = 100_000


def _force(q, ctx):
    ctx["force"] = True


def _cache_timeout(q, ctx):
    ctx["custom_cache_timeout"] = -1  # "never cache": every request would reach Trino


def _samples(q, ctx):
    ctx["result_type"] = "samples"  # the dataset's raw rows


def _sql(q, ctx):
    ctx["result_type"] = "query"


def _order(q, ctx):
    q["orderby"] = [["total_events", True]]


def _post_processing(q, ctx):
    q["post_processing"] = [{"operation": "prophet", "options": {"time_grain": "P1D", "periods": 1000}}]


def _time_comparison(q, ctx):
    q["time_offsets"] = ["1 year ago"]


def _drill_to_detail(q, ctx):
    del ctx["form_data"]["slice_id"]  # Superset's drill-to-detail: any query on a dashboard's dataset


def _no_dashboard(q, ctx):
    del ctx["form_data"]["dashboardId"]


CHANGES = {
    "adhoc-sql-metric": _metric,
    "adhoc-simple-metric": _simple_metric,
    "extra-column": _column,
    "filter-on-another-column": _filter,
    "where": _where,
    "having": _having,
    "row-limit-above-the-charts": _row_limit,
    "force": _force,
    "own-cache-timeout": _cache_timeout,
    "raw-samples": _samples,
    "generated-sql": _sql,
    "changed-order": _order,
    "forecast-post-processing": _post_processing,
    "time-comparison": _time_comparison,
    "drill-to-detail": _drill_to_detail,
    "no-dashboard": _no_dashboard,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_anonymous_request_that_differs_from_the_saved_chart_is_refused(change, visitor, dashboard, charts):
    body = dashboard_request(charts[TOP_USERS], dashboard["id"])
    CHANGES[change](body["queries"][0], body)
    assert chart_data(visitor, body)[0] == 403


def test_anonymous_request_naming_another_dataset_is_refused(visitor, superset, dashboard, charts):
    body = dashboard_request(charts[TOP_USERS], dashboard["id"])
    body["datasource"]["id"] = charts[TIMELINE]["datasource_id"]
    assert chart_data(visitor, body)[0] == 403


def test_anonymous_legacy_explore_json_request_is_refused(base, dashboard, charts):
    """Superset's legacy endpoint with a legacy chart type it still serves: no longer a permission
    of the Public role (401), and refused by the public view were it one (403)."""
    form_data = {
        **json.loads(charts[TOP_USERS]["params"]),
        "slice_id": charts[TOP_USERS]["id"],
        "dashboardId": dashboard["id"],
        "viz_type": "para",
        "metrics": ["total_events"],
        "series": "user",
    }
    body = urllib.parse.urlencode({"form_data": json.dumps(form_data)}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert raw(base, "POST", "/superset/explore_json/", headers, body)[0] in (401, 403)


def test_admin_runs_an_adhoc_metric(superset, dashboard, charts):
    body = dashboard_request(charts[TOP_USERS], dashboard["id"])
    _metric(body["queries"][0], body)
    assert chart_data(superset, body)[0] == 200


def test_dashboard_filter_lists_its_values_for_the_anonymous_visitor(visitor, dashboard, produced):
    status, payload = chart_data(visitor, filter_values_request(dashboard, EVENT_TYPE_FILTER))
    offered = {row["event_type"] for row in payload["result"][0]["data"]} if status == 200 else set()
    assert {"view", "click", "purchase"} <= offered


def test_dashboard_filter_narrows_a_public_chart_for_the_anonymous_visitor(visitor, dashboard, charts, produced):
    chosen = [{"col": "event_type", "op": "IN", "val": ["purchase"]}]
    status, payload = chart_data(visitor, dashboard_request(charts[TIMELINE], dashboard["id"], chosen))
    assert status == 200 and {k for row in payload["result"][0]["data"] for k in row} == {"minute", "purchase"}


@pytest.mark.parametrize(
    "change",
    ["metric", "other-column", "where"],
)
def test_dashboard_filter_request_asking_for_more_than_its_values_is_refused(change, visitor, dashboard):
    body = filter_values_request(dashboard, EVENT_TYPE_FILTER)
    query = body["queries"][0]
    if change == "metric":
        query["metrics"] = [{"expressionType": "SQL", "sqlExpression": "sum(events)", "label": "x"}]
    elif change == "other-column":
        query["columns"] = ["users"]
    else:
        query["extras"]["where"] = "events > 0"
    assert chart_data(visitor, body)[0] == 403


WRITES = {
    "filter-state": lambda d: (f"/api/v1/dashboard/{d}/filter_state", {"value": json.dumps({"id": "x"})}),
    "dashboard-permalink": lambda d: (f"/api/v1/dashboard/{d}/permalink", {"dataMask": {}, "activeTabs": []}),
    "explore-form-data": lambda d: ("/api/v1/explore/form_data", {"datasource_id": 1, "datasource_type": "table"}),
    "explore-permalink": lambda d: ("/api/v1/explore/permalink", {"formData": {"datasource": "1__table"}}),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_anonymous_writes_are_refused(write, base, dashboard):
    visitor = Visitor(base)
    visitor.fetch_csrf()  # as a browser would have it: the refusal is about who asks, not CSRF
    path, body = WRITES[write](dashboard["id"])
    assert visitor.request("POST", path, body)[0] in (401, 403)


# --- 2. limits ------------------------------------------------------------------------------------


def test_public_chart_costs_trino_at_most_one_query_per_worker_for_many_visitors(base, env, dashboard, charts):
    """Superset's cache and the replay of anonymous answers: 40 visitors at once, one query."""
    body = dashboard_request(charts[TOTAL], dashboard["id"])
    marker = "SUM(total_events)"  # the chart's aggregate, in the SQL Superset sends to Trino
    conn = trino.dbapi.connect(host="127.0.0.1", port=int(env["TRINO_PORT"]), user="e2e")

    def superset_queries() -> set[str]:
        cur = conn.cursor()
        cur.execute(
            "SELECT query_id FROM system.runtime.queries WHERE \"user\" = 'superset' AND query LIKE ?",
            [f"%{marker}%"],
        )
        return {row[0] for row in cur.fetchall()}

    before = superset_queries()
    time.sleep(int(env.get("SUPERSET_DATA_CACHE_TIMEOUT", "10")) + 1)  # Superset's cache of it expired
    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda _: chart_data(Visitor(base), body)[0], range(40)))
    assert statuses == [200] * 40 and len(superset_queries() - before) <= 2


def test_anonymous_chart_data_beyond_the_limit_gets_429(visitor, dashboard, charts, env):
    """Refused requests count too: a client sending ever-new ad-hoc queries (a repeated one is
    answered from the replayed refusal) is cut off after the limit, whatever it asks."""
    limit = per_minute(env["SUPERSET_RATE_LIMIT_CHART_DATA"])
    statuses = []
    for i in range(limit + 1):
        body = dashboard_request(charts[TOP_USERS], dashboard["id"])
        body["queries"][0]["metrics"] = [
            {"expressionType": "SQL", "sqlExpression": f"count(*) * {i + 2}", "label": "total_events"}
        ]
        statuses.append(chart_data(visitor, body)[0])
    assert statuses == [403] * limit + [429]


def test_a_repeated_refused_request_is_answered_without_counting(visitor, dashboard, charts, env):
    """The refusal is replayed like an answer: repeating it costs Superset nothing, and no 429."""
    body = dashboard_request(charts[TOP_USERS], dashboard["id"])
    _force(body["queries"][0], body)
    limit = per_minute(env["SUPERSET_RATE_LIMIT_CHART_DATA"])
    assert {chart_data(visitor, body)[0] for _ in range(limit + 1)} == {403}


def test_logged_in_chart_data_is_not_rate_limited(superset, dashboard, charts, env):
    body = dashboard_request(charts[TOTAL], dashboard["id"])
    limit = per_minute(env["SUPERSET_RATE_LIMIT_CHART_DATA"])
    statuses = {chart_data(superset, body)[0] for _ in range(limit + 1)}
    assert statuses == {200}


def _form_login(visitor: Visitor, password: str) -> int:
    form = urllib.parse.urlencode({"username": "admin", "password": password, "csrf_token": visitor.csrf}).encode()
    req = urllib.request.Request(
        visitor.base + "/login/", data=form, headers={"Referer": visitor.base + "/", "X-Forwarded-For": visitor.address}
    )
    try:
        with visitor.opener.open(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_password_guessing_gets_429_after_the_login_limit(base, env):
    guesser = Visitor(base)
    guesser.fetch_csrf()
    limit = per_minute(env["SUPERSET_RATE_LIMIT_LOGIN"])
    statuses = [_form_login(guesser, f"guess-{i}") for i in range(limit + 1)]
    assert 429 not in statuses[:limit] and statuses[limit] == 429


def test_api_login_and_form_login_share_one_count(base, env):
    guesser = Visitor(base)
    guesser.fetch_csrf()
    limit = per_minute(env["SUPERSET_RATE_LIMIT_LOGIN"])
    for i in range(limit):
        _form_login(guesser, f"guess-{i}")
    body = {"username": "admin", "password": "guess", "provider": "db"}
    assert guesser.request("POST", "/api/v1/security/login", body)[0] == 429


def test_request_body_over_the_size_limit_is_refused(base, env):
    size = int(env["SUPERSET_MAX_CONTENT_LENGTH"]) + 1
    status, _ = raw(base, "POST", "/api/v1/chart/data", {"Content-Type": "application/json"}, b" " * size)
    assert status == 413


def test_idle_connection_is_closed_after_the_keepalive(base, env):
    url = urllib.parse.urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: superset\r\nConnection: keep-alive\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        response.read()  # the whole body, which may come in a segment of its own
        time.sleep(int(env["SUPERSET_GUNICORN_KEEPALIVE"]) + 3)
        assert sock.recv(65536) == b""  # the server closed it


def test_a_hung_worker_is_replaced_after_the_gunicorn_timeout(env, base):
    (master,) = [psutil.Process(p["pid"]) for p in Supervisor(Context(env)).processes("superset")]
    workers = master.children()
    hung = workers[0]
    os.kill(hung.pid, signal.SIGSTOP)  # silent: no heartbeat, as a worker stuck in C code
    try:
        deadline = time.monotonic() + int(env["SUPERSET_GUNICORN_TIMEOUT"]) + 60
        while hung.is_running() and hung.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(1)
        replaced = not hung.is_running() or hung.status() == psutil.STATUS_ZOMBIE
    finally:
        if hung.is_running():
            os.kill(hung.pid, signal.SIGCONT)
    # the replacement boots before the next tests use Superset
    deadline = time.monotonic() + 180
    while len(master.children()) < len(workers) and time.monotonic() < deadline:
        time.sleep(1)
    while raw(base, "GET", "/health")[0] != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert replaced


# --- 3. the admin's API ---------------------------------------------------------------------------


def bearer(env, base) -> dict:
    token = SupersetClient(base).api_token(env["SUPERSET_ADMIN_USER"], env["SUPERSET_ADMIN_PASSWORD"])
    return {"Authorization": f"Bearer {token}"}


def test_admin_token_lists_every_chart(env, base, superset):
    script = SupersetClient(base)
    listed = script.request("GET", "/api/v1/chart/?q=(page_size:100)", headers=bearer(env, base))[1]["count"]
    assert listed == superset.get("/api/v1/chart/", page_size=100)["count"] and listed >= 8


def test_admin_token_is_served_as_the_admin(env, base):
    roles = SupersetClient(base).request("GET", "/api/v1/me/roles/", headers=bearer(env, base))[1]["result"]
    assert "Admin" in roles["roles"]


def test_an_invalid_token_is_served_as_nobody(base):
    me = SupersetClient(base).request("GET", "/api/v1/me/", headers={"Authorization": "Bearer abc.def.ghi"})[1]
    assert me["result"]["is_anonymous"] is True


def test_admin_runs_sql_in_sql_lab(superset):
    database = next(d for d in superset.get("/api/v1/database/")["result"] if d["database_name"] == "Trino")
    body = {"database_id": database["id"], "sql": "SELECT 41 + 1 AS answer", "runAsync": False, "schema": "analytics"}
    assert superset.request("POST", "/api/v1/sqllab/execute/", body)[1]["data"] == [{"answer": 42}]


def test_admin_opens_sql_lab_and_the_chart_editor_in_the_browser(env, base, charts):
    from selenium.webdriver.common.by import By

    from tests.support.browser import wait_for

    found = {}
    with chromium() as driver:
        login(driver, base, env["SUPERSET_ADMIN_USER"], env["SUPERSET_ADMIN_PASSWORD"])
        for name, path, selector in (
            ("sql lab", "/sqllab/", "[data-test='sql-editor-tabs']"),
            ("chart editor", f"/explore/?slice_id={charts[TOP_USERS]['id']}", "[data-test='query-save-button']"),
        ):
            driver.get(base + path)
            found[name] = bool(wait_for(lambda s=selector: driver.find_elements(By.CSS_SELECTOR, s), 60))
    assert found == {"sql lab": True, "chart editor": True}


# --- 4. behind the tunnel ---------------------------------------------------------------------------


def session_cookie(headers) -> str:
    return next(v for v in headers.get_all("Set-Cookie") or [] if v.startswith("session="))


def test_session_cookie_over_https_is_secure_httponly_and_samesite(base):
    _, headers = raw(base, "GET", "/login/", {"X-Forwarded-Proto": "https"})
    flags = {f.strip().lower() for f in session_cookie(headers).split(";")[1:]}
    assert {"secure", "httponly", "samesite=lax"} <= flags


def test_session_cookie_over_plain_http_stays_usable_on_loopback(base):
    _, headers = raw(base, "GET", "/login/")
    assert "secure" not in {f.strip().lower() for f in session_cookie(headers).split(";")[1:]}


def test_dashboard_page_carries_a_content_security_policy(base):
    _, headers = raw(base, "GET", "/superset/dashboard/realtime-behavioral-analytics/")
    policy = {d.split()[0]: d.split()[1:] for d in headers["Content-Security-Policy"].split(";") if d.strip()}
    assert policy["script-src"][:2] == ["'self'", "'strict-dynamic'"] and policy["object-src"] == ["'none'"]
    assert not any("unsafe" in s for s in policy["script-src"]) and policy["default-src"] == ["'self'"]


@pytest.mark.parametrize("path", ["/sqllab/", "/", "/login/?next=http://evil.example/owned"])
def test_redirects_never_point_at_a_forwarded_host(path, base):
    status, headers = raw(base, "GET", path, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert "evil.example" not in (headers.get("Location") or "") and status != 500


def test_login_never_sends_the_admin_to_a_forwarded_host(base, env):
    admin = Visitor(base)
    admin.fetch_csrf()
    form = urllib.parse.urlencode(
        {"username": env["SUPERSET_ADMIN_USER"], "password": env["SUPERSET_ADMIN_PASSWORD"], "csrf_token": admin.csrf}
    ).encode()
    jar = next(h for h in admin.opener.handlers if hasattr(h, "cookiejar")).cookiejar
    cookies = "; ".join(f"{c.name}={c.value}" for c in jar)
    status, headers = raw(
        base,
        "POST",
        "/login/?next=http://evil.example/owned",
        {
            "Cookie": cookies,
            "Content-Type": "application/x-www-form-urlencoded",
            "Referer": base + "/",
            "X-Forwarded-Host": "evil.example",
        },
        form,
    )
    assert status == 302 and "evil.example" not in headers["Location"]
