"""A small client for Superset's REST API (login, CSRF, chart data), standard library only."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

DASHBOARD_SLUG = "realtime-behavioral-analytics"
PRODUCT_SLUG = "product-analytics"


class SupersetClient:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf: str | None = None

    def request(
        self, method: str, path: str, body: dict | None = None, expect: int | None = 200, headers: dict | None = None
    ):
        """(status, parsed JSON or text); raises if `expect` is given and the status differs."""
        headers = {"Referer": self.base + "/", "Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        if self.csrf:
            headers["X-CSRFToken"] = self.csrf
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with self.opener.open(req, timeout=120) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
        payload = json.loads(raw) if "json" in ctype and raw else raw.decode(errors="replace")
        if expect is not None and status != expect:
            raise AssertionError(f"{method} {path}: HTTP {status} (want {expect}): {str(payload)[:500]}")
        return status, payload

    def login(self, username: str, password: str) -> None:
        """A browser's login (session cookie, CSRF token). `api_token()` is the API's way in."""
        self.fetch_csrf()
        form = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": self.csrf})
        req = urllib.request.Request(self.base + "/login/", data=form.encode(), headers={"Referer": self.base + "/"})
        self.opener.open(req, timeout=60).read()
        me = self.request("GET", "/api/v1/me/")[1]["result"]
        if me.get("username") != username:
            raise AssertionError(f"login as {username} failed: {me}")

    def fetch_csrf(self) -> None:
        """The CSRF token a browser gets with the login page (anonymous visitors too)."""
        page = self.opener.open(self.base + "/login/", timeout=60).read().decode()
        self.csrf = re.search(r'name="csrf_token"\s+id="csrf_token"\s+value="([^"]+)"', page).group(1)

    def api_token(self, username: str, password: str) -> str:
        """An access token from the API's login (what scripts send as `Authorization: Bearer`)."""
        body = {"username": username, "password": password, "provider": "db", "refresh": False}
        return self.request("POST", "/api/v1/security/login", body)[1]["access_token"]

    def get(self, path: str, **query) -> dict:
        if query:
            path += "?q=" + urllib.parse.quote(_rison(query))
        return self.request("GET", path)[1]

    def dashboard(self, slug: str = DASHBOARD_SLUG) -> dict:
        return self.get(f"/api/v1/dashboard/{slug}")["result"]

    def charts(self, slug: str = DASHBOARD_SLUG) -> dict[str, dict]:
        """The dashboard's charts by title, each with its saved query context."""
        out = {}
        for chart in self.get(f"/api/v1/dashboard/{slug}/charts")["result"]:
            full = self.get(f"/api/v1/chart/{chart['id']}")["result"]
            out[full["slice_name"]] = full
        return out

    def chart_data(self, chart: dict, filters: list[dict] | None = None, force: bool = True) -> list[dict]:
        """The rows the chart draws, by its saved query context: what the dashboard asks Superset
        for (through Trino). `filters` are added the way a dashboard filter would add them."""
        context = json.loads(chart["query_context"])
        context["force"] = force
        for query in context["queries"]:
            query["filters"] = [*query.get("filters", []), *(filters or [])]
        result = self.request("POST", "/api/v1/chart/data", context)[1]["result"]
        return result[0]["data"]


def chart_data_as_visitor(anonymous: SupersetClient, body: dict, headers: dict[str, str]) -> list[dict]:
    """The rows an anonymous visitor gets for a chart-data request (`headers`: its client address,
    X-Forwarded-For, so that each module's visitor has a rate budget of its own); 200 or it fails."""
    status, payload = anonymous.request("POST", "/api/v1/chart/data", body, expect=None, headers=headers)
    assert status == 200, payload
    return payload["result"][0]["data"]


def dashboard_request(chart: dict, dashboard_id: int, filters: list[dict] | None = None) -> dict:
    """A chart-data request as the dashboard page sends it: the chart's saved query context, with
    the dashboard's and the chart's ids in form_data (and a dashboard filter's clauses, if any)."""
    context = json.loads(chart["query_context"])
    context["form_data"].update(dashboardId=dashboard_id, slice_id=chart["id"])
    for query in context["queries"]:
        query["filters"] = [*query.get("filters", []), *(filters or [])]
    return context


def filter_values_request(dashboard: dict, filter_id: str) -> dict:
    """The request a dashboard's select filter sends for the values it offers (as Superset 6.1's
    filter bar builds it)."""
    config = next(
        f for f in json.loads(dashboard["json_metadata"])["native_filter_configuration"] if f["id"] == filter_id
    )
    target = config["targets"][0]
    column, dataset = target["column"]["name"], target["datasetId"]
    query = {
        "filters": [],
        "extras": {"having": "", "where": ""},
        "applied_time_extras": {},
        "columns": [column],
        "metrics": [],
        "orderby": [[column, True]],
        "annotation_layers": [],
        "row_limit": 1000,
        "series_limit": 0,
        "group_others_when_limit_reached": False,
        "order_desc": True,
        "url_params": {},
        "custom_params": {},
        "custom_form_data": {},
    }
    form_data = {
        **config.get("controlValues", {}),
        "datasource": f"{dataset}__table",
        "groupby": [column],
        "adhoc_filters": [],
        "extra_filters": [],
        "extra_form_data": {},
        "metrics": ["count"],
        "row_limit": 1000,
        "showSearch": True,
        "url_params": {},
        "inView": True,
        "viz_type": "filter_select",
        "type": "NATIVE_FILTER",
        "dashboardId": dashboard["id"],
        "native_filter_id": filter_id,
        "force": False,
        "result_format": "json",
        "result_type": "full",
    }
    return {
        "datasource": {"id": dataset, "type": "table"},
        "force": False,
        "queries": [query],
        "form_data": form_data,
        "result_format": "json",
        "result_type": "full",
    }


def _rison(value) -> str:
    """Just enough Rison for Superset's `q=` parameters."""
    if isinstance(value, dict):
        return "(" + ",".join(f"{k}:{_rison(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list | tuple):
        return "!(" + ",".join(_rison(v) for v in value) + ")"
    if isinstance(value, bool):
        return "!t" if value else "!f"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("!", "!!").replace("'", "!'") + "'"


def series_totals(rows: list[dict]) -> Counter:
    """A timeline chart's rows are pivoted (one per minute, one column per series): each series' sum."""
    out: Counter = Counter()
    for row in rows:
        for column, value in row.items():
            if column != "minute" and value is not None:
                out[column] += int(value)
    return out
