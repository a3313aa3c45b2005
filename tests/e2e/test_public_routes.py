"""Every route Superset registers, asked by an anonymous visitor (issue 18): refused unless an
allow-list entry says why the public dashboard needs it.

The routes come from the running stack's own Superset (its virtualenv, its configuration: a
script prints `app.url_map`), not from a hand-made list: a Superset upgrade that adds a route
the Public role can reach fails `test_every_route_an_anonymous_visitor_reaches_is_allow_listed`
until someone writes down why it may stay open. Each route is requested with each of its
methods, its path parameters filled with the public dashboard's real ids, from an address of
its own (the rate limits count per address). Refused means 401, 403, 404, 405 or a redirect to
the login page; anything else (200, 400 after the permission check, 500...) is reachable.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import subprocess
import urllib.parse

import pytest

from native.context import Context
from native.services.superset import SupersetService

#: (method, rule) -> why the anonymous visitor may reach it. Nothing else may answer them.
ALLOWED = {
    # the public dashboard itself
    ("GET", "/superset/dashboard/<dashboard_id_or_slug>/"): "the public dashboard's page",
    ("GET", "/api/v1/dashboard/"): "lists the dashboards the visitor may see (the public one)",
    ("GET", "/api/v1/dashboard/<id_or_slug>"): "the dashboard's layout and metadata",
    ("GET", "/api/v1/dashboard/<id_or_slug>/charts"): "the charts' definitions the page draws from",
    ("GET", "/api/v1/dashboard/<id_or_slug>/datasets"): "column names and formats (SQL, catalog, schema removed)",
    ("GET", "/api/v1/dashboard/<id_or_slug>/tabs"): "the dashboard's tabs",
    ("POST", "/api/v1/chart/data"): "the charts' data: their saved queries only (public_queries.py)",
    ("GET", "/api/v1/time_range/"): "the time filter's label (parses a time range, runs nothing)",
    ("GET", "/api/v1/me/"): "who the page is for (anonymous)",
    ("GET", "/api/v1/me/roles/"): "the page's menus (Public)",
    ("GET", "/api/v1/dashboard/_info"): "the dashboard API's own description (permissions, filters), no data",
    ("GET", "/api/v1/dashboard/favorite_status/"): "whether the dashboard is a favourite (never, for nobody)",
    ("GET", "/api/v1/theme/"): "the page's themes (colours, fonts)",
    ("GET", "/api/v1/theme/<int:pk>"): "the dashboard's theme",
    ("GET", "/api/v1/theme/_info"): "the theme API's own description, no data",
    ("GET", "/api/v1/user/<int:user_id>/avatar.png"): "a user's avatar URL (none here: 204)",
    ("GET", "/"): "home: redirects to the welcome page, which sends the visitor to the login",
    ("GET", "/back"): "redirects to the previous page (home)",
    ("GET", "/login/logout/"): "ends a session (redirects home)",
    # the login, for the admin
    ("GET", "/login/"): "the admin's login page",
    ("POST", "/login/"): "the admin's login (rate-limited per address)",
    ("POST", "/api/v1/security/login"): "the admin's API token (rate-limited per address)",
    ("GET", "/logout/"): "ends a session (redirects home)",
    ("GET", "/health"): "health check",
    ("GET", "/healthcheck"): "health check",
    ("GET", "/ping"): "health check",
    ("GET", "/static/<path:filename>"): "the frontend's files",
    ("GET", "/static/appbuilder/<path:filename>"): "FAB's static files",
    ("GET", "/lang/<string:locale>"): "the interface language",
}

REFUSED = {401, 403, 404, 405}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

#: Prints every rule of the Superset app the stack runs, with its methods (run with its virtualenv
#: and environment, so that superset_config.py and the security manager are the stack's).
DUMP_ROUTES = """
import json, sys
from superset.app import create_app
app = create_app()
rules = [[r.rule, sorted(r.methods or ()), r.endpoint] for r in app.url_map.iter_rules()]
sys.stdout.write("ROUTES " + json.dumps(rules) + "\\n")
"""

_addresses = (f"203.0.113.{i % 250 + 1}" if i < 250 else f"2001:db8::{i:x}" for i in itertools.count())


@pytest.fixture(scope="module")
def routes(env) -> list[tuple[str, str, str]]:
    ctx = Context(env)
    service = SupersetService()
    out = subprocess.run(
        [str(service.venv(ctx) / "bin" / "python"), "-c", DUMP_ROUTES],
        env=service.env(ctx),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("ROUTES ")]
    return [
        (method, rule, endpoint)
        for rule, methods, endpoint in json.loads(line.removeprefix("ROUTES "))
        for method in methods
        if method in METHODS
    ]


@pytest.fixture(scope="module")
def ids(superset) -> dict[str, str]:
    """Real ids from the stack, for the path parameters."""
    dashboard = superset.dashboard()
    charts = superset.charts()
    chart = next(iter(charts.values()))
    return {
        "dashboard": str(dashboard["id"]),
        "chart": str(chart["id"]),
        "dataset": str(chart["datasource_id"]),
        "slug": dashboard["slug"],
    }


def fill(rule: str, ids: dict[str, str]) -> str:
    """The rule's path with real ids: the dashboard's for dashboard routes, else a public chart's or
    its dataset's; other parameters get harmless values."""

    def value(match: re.Match) -> str:
        converter, name = (match.group(1) or ""), match.group(2)
        if "dashboard" in name or "slug" in name or rule.startswith("/api/v1/dashboard/"):
            return ids["dashboard"]
        if "datasource_type" in name:
            return "table"
        if "dataset" in name or "datasource" in name or rule.startswith(("/api/v1/dataset/", "/datasource/")):
            return ids["dataset"]
        if converter.startswith("int") or name == "pk" or "id" in name.split("_"):
            return ids["chart"]
        if converter.startswith("path"):
            return "index.html"
        return "x"

    return re.sub(r"<(?:([a-z]+(?:\([^)]*\))?):)?([a-zA-Z_]+)>", value, rule)


class Anonymous:
    """A browser nobody logged in with: the session cookie and CSRF token the login page gives
    anyone, so that a refusal is about who asks, not a missing token."""

    def __init__(self, base: str) -> None:
        self.base = urllib.parse.urlsplit(base)
        status, headers, page = self.request("GET", "/login/", raw=True)
        cookies = [c.split(";", 1)[0] for c in headers.get_all("Set-Cookie") or []]
        self.cookie = next(c for c in cookies if c.startswith("session="))
        self.csrf = re.search(r'name="csrf_token"\s+id="csrf_token"\s+value="([^"]+)"', page).group(1)

    def request(self, method: str, path: str, raw: bool = False):
        conn = http.client.HTTPConnection(self.base.hostname, self.base.port, timeout=120)
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        headers = {
            "X-Forwarded-For": next(_addresses),
            "Accept": "application/json",
            "Referer": f"http://{self.base.netloc}/",
        }
        if not raw:
            headers.update({"Cookie": self.cookie, "X-CSRFToken": self.csrf})
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body, headers)
            resp = conn.getresponse()
            data = resp.read().decode(errors="replace")
            if raw:
                return resp.status, resp.headers, data
            return resp.status, resp.headers.get("Location") or ""
        finally:
            conn.close()


def anonymous(base: str, method: str, path: str) -> tuple[int, str]:
    return Anonymous(base).request(method, path)


def refused(status: int, location: str) -> bool:
    return status in REFUSED or (300 <= status < 400 and "/login" in location)


def test_the_route_list_comes_from_the_app(routes):
    """The walk below sees Superset's own routes: hundreds of them, the allow-listed ones included."""
    listed = {(method, rule) for method, rule, _ in routes}
    assert len(listed) > 300 and set(ALLOWED) <= listed, sorted(set(ALLOWED) - listed)


def test_every_route_an_anonymous_visitor_reaches_is_allow_listed(routes, ids, env):
    visitor = Anonymous(f"http://127.0.0.1:{env['SUPERSET_PORT']}")
    reached = {}
    for method, rule, endpoint in routes:
        if (method, rule) in ALLOWED:
            continue
        status, location = visitor.request(method, fill(rule, ids))
        if not refused(status, location):
            reached[f"{method} {rule}"] = f"{status} {location} ({endpoint})"
    assert reached == {}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/form_data/?slice_id={chart}",
        "/api/v1/explore/?slice_id={chart}",
        "/api/v1/explore/form_data/x",
        "/api/v1/explore/permalink/x",
        "/api/v1/dashboard/permalink/x",
        "/superset/dashboard/p/x/",
        "/explore/?slice_id={chart}",
        "/superset/explore/?slice_id={chart}",
        "/superset/explore_json/?form_data=%7B%22slice_id%22%3A{chart}%7D",
        "/superset/slice/{chart}/",
        "/datasource/get/table/{dataset}/",
        "/datasource/external_metadata/table/{dataset}/",
        "/api/v1/chart/{chart}",
        "/api/v1/chart/{chart}/data/",
        "/api/v1/dataset/{dataset}",
        "/api/v1/dashboard/{dashboard}/embedded",
        "/api/v1/annotation_layer/",
    ],
)
def test_anonymous_reads_of_chart_definitions_and_sql_are_refused(path, ids, env):
    base = f"http://127.0.0.1:{env['SUPERSET_PORT']}"
    status, location = anonymous(base, "GET", path.format(**ids))
    assert refused(status, location), (status, location)


@pytest.mark.parametrize("kind", ["explore", "dashboard"])
def test_anonymous_read_of_an_admins_permalink_is_refused(kind, superset, ids, env):
    if kind == "explore":
        body = {"formData": {"datasource": f"{ids['dataset']}__table", "slice_id": int(ids["chart"])}}
        key = superset.request("POST", "/api/v1/explore/permalink", body, expect=201)[1]["key"]
        path = f"/api/v1/explore/permalink/{key}"
    else:
        body = {"dataMask": {}, "activeTabs": [], "urlParams": []}
        key = superset.request("POST", f"/api/v1/dashboard/{ids['dashboard']}/permalink", body, expect=201)[1]["key"]
        path = f"/api/v1/dashboard/permalink/{key}"
    admin_status = superset.request("GET", path, expect=None)[0]
    status, location = anonymous(f"http://127.0.0.1:{env['SUPERSET_PORT']}", "GET", path)
    assert admin_status == 200 and refused(status, location), (admin_status, status)
