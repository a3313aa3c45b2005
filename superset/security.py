"""This project's Superset security manager (CUSTOM_SECURITY_MANAGER) and HTTP hardening.

- Anonymous visitors (the Public role, DASHBOARD_RBAC) run the public charts' saved queries and
  nothing else: every chart-data request (POST /api/v1/chart/data, a table's) is compared with the
  chart's saved query context by `public_queries`, as sent and as Superset normalised it (Superset
  checks only guest tokens, and only their metrics and columns); legacy `explore_json` requests
  are refused outright. The Public role keeps only what the dashboard page reads: no chart's
  form data, no explore or dashboard permalink, no dataset, annotation or embedding settings;
  endpoints its remaining permissions open that the page never asks for (favourites, lists,
  FAB's admin actions...) answer the anonymous visitor 401 (`ANONYMOUS_REFUSED_ENDPOINTS`).
- Anonymous answers carry nothing internal (`sanitise_anonymous_answer`): chart data without the
  SQL it ran (as Superset does for guest users), the dashboard's datasets without SQL, catalog or
  schema, and any error that is not the public view's own refusal or a fixed message (a Trino or
  Postgres failure, a permission message naming a datasource) as a generic message with a
  reference; the full answer is logged with that reference.
- A valid `Authorization: Bearer` token from `/api/v1/security/login` is honoured everywhere:
  FAB skips the token wherever the Public role holds the permission, so an admin's script would
  otherwise run as the anonymous visitor (no charts, role Public).
- Rate limits (flask-limiter, counted in Postgres by `rate_limits`): chart data per anonymous
  client address, login (form and API) per address; the limit strings come from .env.
- Session cookies get `Secure` whenever the request came over HTTPS (the tunnel sets
  X-Forwarded-Proto), and stay usable over plain http on loopback.
- Anonymous chart-data answers are replayed for a moment (`public_cache`), with the public charts'
  saved requests apart from the rest; a request skips the replay only when `LoggedIn` verified
  its session or token.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import public_queries
from flask import Flask, current_app, g, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from flask_appbuilder.security.views import AuthView
from flask_jwt_extended import decode_token
from flask_login import current_user
from flask_login.utils import decode_cookie
from itsdangerous import BadSignature
from public_cache import PublicChartCache
from superset.errors import ErrorLevel, SupersetError, SupersetErrorType
from superset.exceptions import SupersetSecurityException
from werkzeug.http import parse_cookie

from common.client_address import client_address as shared_client_address
from common.client_address import rate_limit_key
from superset.security import SupersetSecurityManager

logger = logging.getLogger(__name__)

#: Per client address (X-Forwarded-For from the one proxy in front, else the peer). A dashboard
#: tab asks ~8 charts per refresh (10 s): ~50 a minute.
CHART_DATA_LIMIT = os.environ.get("SUPERSET_RATE_LIMIT_CHART_DATA", "120 per minute")
#: Form login and API login together, per client address (POST only: the page itself is free).
LOGIN_LIMIT = os.environ.get("SUPERSET_RATE_LIMIT_LOGIN", "10 per minute")
CHART_DATA_PATH = "/api/v1/chart/data"


def is_anonymous() -> bool:
    """True inside a request served to nobody in particular, or to nobody known yet (CLI commands
    and jobs have no request: they are not visitors)."""
    if not has_request_context():
        return False
    user = getattr(g, "user", None)
    return user is None or user.is_anonymous


def refused(reason: str) -> SupersetSecurityException:
    """The public view's refusal (403), its reason shown as is: it names what the request changed."""
    g.public_refusal = reason
    return SupersetSecurityException(
        SupersetError(
            error_type=SupersetErrorType.DASHBOARD_SECURITY_ACCESS_ERROR,
            message=f"The public dashboard runs its charts' saved queries only: {reason}",
            level=ErrorLevel.WARNING,
        )
    )


def query_dict(query: Any) -> dict[str, Any]:
    """A normalised QueryObject as plain JSON data: what it runs, and what `to_dict()` leaves out
    (time range and offsets, annotations, its own result type, time extras; its datasource, which
    Superset 6.1 always sets to the request's: a query's own makes it fail)."""
    datasource = query.datasource
    data = {
        **query.to_dict(),
        "time_range": query.time_range,
        "time_offsets": query.time_offsets,
        "annotation_layers": query.annotation_layers,
        "result_type": getattr(query.result_type, "value", query.result_type),
        "datasource": None
        if datasource is None
        else [datasource.id, str(getattr(datasource.type, "value", datasource.type))],
        "applied_time_extras": query.applied_time_extras,
    }
    return json.loads(public_queries.canonical(data))


@functools.cache
def query_fields() -> frozenset[str]:
    """The keys Superset reads from each query of a chart-data request (its schema drops the rest)."""
    from superset.charts.schemas import ChartDataQueryObjectSchema

    return frozenset(f.data_key or name for name, f in ChartDataQueryObjectSchema().fields.items())


@functools.lru_cache(maxsize=256)
def _saved_queries(slice_id: int, changed_on: str, query_context: str) -> str:
    """The chart's saved query context, normalised by Superset as a request would be (cached per
    version of the chart; the key carries changed_on and the text)."""
    from superset.charts.schemas import ChartDataQueryContextSchema

    saved = ChartDataQueryContextSchema().load(json.loads(query_context))
    return public_queries.canonical([query_dict(q) for q in saved.queries])


class PublicDashboardSecurityManager(SupersetSecurityManager):
    """Superset's security manager, with the public view narrowed to the saved queries."""

    #: Superset's Public role (PUBLIC_ROLE_LIKE = "Public", applied by `superset init`) without its
    #: one write: dashboard filter states, which Superset keeps for 90 days in the metadata
    #: database, any number of any size. Without it the dashboard's filters still apply; only their
    #: state is not written down for the page's URL.
    #: Nor its reads of what the dashboard page does not need and that holds a chart's definition,
    #: a dataset's SQL or a stored state: any chart's form data (`/api/v1/form_data/`), the legacy
    #: chart and query endpoints (`/superset/explore_json/`, `/superset/slice/`, `/api/v1/query/`),
    #: explore and dashboard permalinks, datasets (`/datasource/get/`, their tables' columns),
    #: annotations and embedding settings.
    PUBLIC_ROLE_PERMISSIONS = SupersetSecurityManager.PUBLIC_ROLE_PERMISSIONS - {
        ("can_write", "DashboardFilterStateRestApi"),
        ("can_query_form_data", "Api"),
        ("can_query", "Api"),
        ("can_explore_json", "Superset"),
        ("can_slice", "Superset"),
        ("can_dashboard_permalink", "Superset"),
        ("can_read", "DashboardPermalinkRestApi"),
        ("can_read", "ExplorePermalinkRestApi"),
        ("can_get", "Datasource"),
        ("can_external_metadata", "Datasource"),
        ("can_read", "Annotation"),
        ("can_read", "AnnotationLayerRestApi"),
        ("can_read", "EmbeddedDashboard"),
    }

    #: Endpoints the Public role's permissions open that the dashboard page never asks for:
    #: favourites (an anonymous write per request), the chart and CSS template lists and their
    #: _info, the admin's list pages, FAB's user, role and group actions (they fail before their
    #: permission check), self-registration, the OAuth2 callback of databases, Superset's version.
    #: Refused for the anonymous visitor before they run (test_public_routes.py walks them all).
    ANONYMOUS_REFUSED_ENDPOINTS = frozenset(
        {
            "ChartRestApi.add_favorite",
            "ChartRestApi.remove_favorite",
            "DashboardRestApi.add_favorite",
            "DashboardRestApi.remove_favorite",
            "ChartRestApi.get_list",
            "ChartRestApi.info",
            "ChartRestApi.favorite_status",
            "CssTemplateRestApi.get_list",
            "CssTemplateRestApi.info",
            "SliceModelView.list",
            "DashboardModelView.list",
            "CssTemplateModelView.list",
            "ThemeModelView.list",
            "UserDBModelView.action",
            "UserDBModelView.action_post",
            "RoleModelView.action",
            "RoleModelView.action_post",
            "UserGroupModelView.action",
            "UserGroupModelView.action_post",
            "SupersetRegisterUserView.register",
            "SupersetRegisterUserView.activation",
            "DatabaseRestApi.oauth2",
            "health.version",
        }
    )

    def __init__(self, appbuilder: Any) -> None:
        super().__init__(appbuilder)
        current_app.after_request(sanitise_anonymous_answer)

    def before_request(self) -> Any:
        """FAB's (who is asking), then the anonymous visitor's refusals by endpoint."""
        g.user = current_user
        if is_anonymous() and request.endpoint in self.ANONYMOUS_REFUSED_ENDPOINTS:
            return current_app.response_class(
                json.dumps({"message": "Not available to anonymous visitors: log in first"}),
                status=401,
                mimetype="application/json",
            )
        return None

    # --- who is asking ---------------------------------------------------------------------

    def request_loader(self, request_: Any) -> Any:
        return self.bearer_user(request_) or super().request_loader(request_)

    def bearer_user(self, request_: Any) -> Any:
        """The active user of a valid access token in `Authorization: Bearer`, else None (an
        invalid token leaves the request anonymous: FAB answers 401 wherever a login is needed)."""
        scheme, _, token = request_.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            claims = decode_token(token.strip())
        except Exception:  # noqa: BLE001 - expired, forged, malformed: all mean "not this user"
            return None
        if claims.get("type") != "access":
            return None
        return self.load_user_jwt(None, claims)

    # --- what the anonymous visitor may run --------------------------------------------------

    def raise_for_access(self, **kwargs: Any) -> None:
        if is_anonymous():
            if kwargs.get("viz") is not None:
                raise refused("legacy chart requests (explore_json) are not public")
            if (query_context := kwargs.get("query_context")) is not None and (
                reason := self.public_query_refusal(query_context)
            ):
                raise refused(reason)
        super().raise_for_access(**kwargs)

    def public_query_refusal(self, query_context: Any) -> str | None:
        """Why an anonymous chart-data request is more than a public chart's saved query, or None."""
        from superset.models.dashboard import Dashboard

        # The request as sent, beside what Superset made of it: the rules compare both. Other ways
        # to a query context (a chart's saved one by GET, the legacy /api/v1/query/, a cached
        # async request) carry no dashboard request and are not public.
        body = request.get_json(silent=True) if request.method == "POST" and request.path == CHART_DATA_PATH else None
        if not isinstance(body, dict):
            return f"charts are asked for by POST {CHART_DATA_PATH} with a JSON body"
        if reason := public_queries.refuse_request_body(body):
            return reason
        if reason := public_queries.refuse_request(
            force=bool(query_context.force),
            result_type=str(getattr(query_context.result_type, "value", query_context.result_type)),
            result_format=str(getattr(query_context.result_format, "value", query_context.result_format)),
            custom_cache_timeout=query_context.custom_cache_timeout,
        ):
            return reason
        form_data = query_context.form_data or {}
        dashboard_id = form_data.get("dashboardId")
        dashboard = self.session.get(Dashboard, dashboard_id) if isinstance(dashboard_id, int) else None
        if dashboard is None:
            return "charts are asked for from their dashboard (form_data.dashboardId)"
        native_filters = json.loads(dashboard.json_metadata or "{}").get("native_filter_configuration") or []
        filter_columns = {
            target["column"]["name"]
            for fltr in native_filters
            if fltr.get("filterType") == "filter_select"
            for target in fltr.get("targets", [])
            if isinstance(target.get("column"), dict) and target["column"].get("name")
        }
        datasource = query_context.datasource
        if str(getattr(datasource.type, "value", datasource.type)) != public_queries.DATASOURCE_TYPE:
            return f"datasource: a {public_queries.DATASOURCE_TYPE} (a dataset) only"
        requested = [query_dict(q) for q in query_context.queries]

        if form_data.get("type") == "NATIVE_FILTER":
            fltr = next((f for f in native_filters if f.get("id") == form_data.get("native_filter_id")), None)
            targets = (fltr or {}).get("targets") or [{}]
            column = (targets[0].get("column") or {}).get("name")
            if fltr is None or fltr.get("filterType") != "filter_select" or not column:
                return "a filter of this dashboard (native_filter_id)"
            if targets[0].get("datasetId") != datasource.id:
                return "the filter's own dataset"
            return public_queries.refuse_native_filter_queries(
                requested, column, current_app.config["NATIVE_FILTER_DEFAULT_ROW_LIMIT"], filter_columns
            )

        if form_data.get("parent_slice_id") is not None or not isinstance(form_data.get("slice_id"), int):
            return "a chart of the dashboard by its id (no drill-down, no child charts)"
        # By id, not query_context.slice_: Superset loads that through the chart list's filter,
        # which hides every chart from the anonymous visitor (it is None for them).
        chart = next((s for s in dashboard.slices if s.id == form_data["slice_id"]), None)
        if chart is None:
            return "a chart of this dashboard (slice_id)"
        if (datasource.id, str(getattr(datasource.type, "value", datasource.type))) != (
            chart.datasource_id,
            chart.datasource_type,
        ):
            return "the chart's own dataset"
        if not chart.query_context:
            return "the chart has no saved query (save it once in the chart editor)"
        if reason := public_queries.refuse_chart_request(
            body, json.loads(chart.query_context), filter_columns, query_fields()
        ):
            return reason
        saved = json.loads(_saved_queries(chart.id, str(chart.changed_on), chart.query_context))
        return public_queries.refuse_chart_queries(requested, saved, filter_columns)

    # --- rate limits ------------------------------------------------------------------------

    def add_limit_view(self, baseview: Any) -> None:
        """Called by FAB for every view and API it registers, once its blueprint exists."""
        super().add_limit_view(baseview)
        name = type(baseview).__name__
        if name == "ChartDataRestApi":
            # The admin (and any logged-in user) is trusted; the visitor is counted by address.
            self.limiter.limit(CHART_DATA_LIMIT, exempt_when=lambda: not current_user.is_anonymous)(baseview.blueprint)
        elif isinstance(baseview, AuthView) or name == "SecurityApi":
            # Every way in (the login form's POST is served by FAB's AuthDBView, the page by
            # Superset's own view; the API's /security/login) shares one counter: a password
            # guesser can't multiply its rate.
            self.limiter.shared_limit(LOGIN_LIMIT, scope="login", methods=["POST"])(baseview.blueprint)


# --- what the anonymous visitor is answered ------------------------------------------------------

#: Keys of a chart-data query's answer that are Superset's internals: the SQL it ran, a failure's
#: text and trace (the answer of a failed query is replaced whole, below).
CHART_ANSWER_INTERNALS = ("query", "error", "stacktrace")
#: Keys of a dataset, as the dashboard's `/datasets` lists them, that the page does not draw with:
#: its SQL, where it lives (catalog, schema: also inside `name` and `perm`), the admin's links and
#: owners. Columns and metrics keep their names and formats, not their SQL expressions.
DATASET_INTERNALS = (
    "sql",
    "schema",
    "catalog",
    "select_star",
    "perm",
    "edit_url",
    "owners",
    "params",
    "template_params",
    "fetch_values_predicate",
    "extra",
    "health_check_message",
)
#: Error answers that carry no internal text of their own (FAB's and Superset's fixed messages,
#: the limits' own); every other anonymous error answer is replaced by `FAILED`.
PLAIN_ERRORS = frozenset({401, 404, 405, 413, 429})
FAILED = "This request could not be answered. Reference: {reference}"


def sanitise_anonymous_answer(response: Any) -> Any:
    """after_request: takes Superset's internals out of an anonymous visitor's JSON answer. Chart
    data loses the SQL it ran (as Superset does for guest users), the dashboard's datasets their
    SQL, catalog and schema; an error (a Trino or Postgres failure's text, a datasource's name in a
    permission message) becomes a generic message with a reference, logged with the full answer."""
    if not is_anonymous() or response.mimetype != "application/json" or response.direct_passthrough:
        return response
    try:
        data = json.loads(response.get_data())
    except ValueError:
        return response
    if response.status_code >= 400:
        if response.status_code in PLAIN_ERRORS or getattr(g, "public_refusal", None):
            return response
        reference = uuid.uuid4().hex[:12]
        logger.warning(
            "anonymous %s %s answered %s, reference %s: %s",
            request.method,
            request.path,
            response.status_code,
            reference,
            response.get_data(as_text=True)[:4000],
        )
        data = {"message": FAILED.format(reference=reference), "reference": reference}
    elif request.path == CHART_DATA_PATH and isinstance(data, dict):
        for result in data.get("result") or []:
            for key in CHART_ANSWER_INTERNALS:
                if isinstance(result, dict):
                    result.pop(key, None)
    elif request.path.startswith("/api/v1/dashboard/") and request.path.rstrip("/").endswith("/datasets"):
        for dataset in data.get("result") or [] if isinstance(data, dict) else []:
            if isinstance(dataset, dict):
                for key in DATASET_INTERNALS:
                    dataset.pop(key, None)
                dataset["name"] = dataset.get("table_name")
                for item in [*(dataset.get("columns") or []), *(dataset.get("metrics") or [])]:
                    if isinstance(item, dict):
                        item.pop("expression", None)
    else:
        return response
    response.set_data(json.dumps(data))
    return response


class HttpsAwareSessionInterface(SecureCookieSessionInterface):
    """Marks the session cookie Secure when the request came over HTTPS (behind the tunnel, from
    X-Forwarded-Proto through ProxyFix), and leaves it usable over plain http on loopback."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or (has_request_context() and request.is_secure))


def client_address(environ: dict) -> str:
    """The client as Superset's rate limits count it (`rate_limits.client_key`: the shared rule of
    common/client_address.py, an IPv6 client by its /64), read before ProxyFix runs (the replay
    sits outside it)."""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    return rate_limit_key(shared_client_address([forwarded] if forwarded else [], environ.get("REMOTE_ADDR")))


class LoggedIn:
    """Whether a request is a logged-in user's, verified (read without Flask's request, for the
    replay): a session cookie whose signature verifies and holds a user id, a Flask-Login remember
    cookie whose digest verifies, or an `Authorization: Bearer` access token that decodes with the
    app's key, each of a user who exists and is active; or a guest token that verifies (embedded
    dashboards only). A cookie or header that is merely present counts for nothing: the request is
    the anonymous visitor's, replayed and bounded like any other."""

    #: Seconds a user's "active" is remembered per worker (a deactivated user's requests pass the
    #: replay for at most this long, as they would have passed it anyway).
    ACTIVE_SECONDS = 10.0

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.active: dict[str, tuple[float, bool]] = {}

    def __call__(self, environ: dict) -> bool:
        config = self.app.config
        cookies = parse_cookie(environ.get("HTTP_COOKIE", ""))
        ids = [
            self.session_user(cookies.get(config["SESSION_COOKIE_NAME"])),
            decode_cookie(remember, key=config["SECRET_KEY"])
            if (remember := cookies.get(config.get("REMEMBER_COOKIE_NAME", "remember_token")))
            else None,
        ]
        authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
        guest = str(environ.get("HTTP_" + config["GUEST_TOKEN_HEADER_NAME"].upper().replace("-", "_"), ""))
        if not any(ids) and not authorization.strip() and not guest.strip():
            return False  # nothing to verify: the common case costs no app context
        with self.app.app_context():
            ids.append(self.token_user(authorization))
            return any(self.is_active(str(uid)) for uid in ids if uid) or self.guest_verified(guest)

    def session_user(self, value: str | None) -> Any:
        serializer = self.app.session_interface.get_signing_serializer(self.app)
        if not value or serializer is None:
            return None
        try:
            return serializer.loads(value).get("_user_id")
        except (BadSignature, AttributeError):
            return None  # Flask starts an empty (anonymous) session for it too

    @staticmethod
    def token_user(authorization: str) -> Any:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            claims = decode_token(token.strip())
        except Exception:  # noqa: BLE001 - expired, forged, malformed: all mean "nobody"
            return None
        return claims.get("sub") if claims.get("type") == "access" else None

    def is_active(self, user_id: str) -> bool:
        now = time.monotonic()
        if (known := self.active.get(user_id)) is not None and known[0] > now:
            return known[1]
        try:
            active = self.app.appbuilder.sm.load_user(int(user_id)) is not None
        except (TypeError, ValueError):
            active = False
        if len(self.active) > 10_000:
            self.active.clear()
        self.active[user_id] = (now + self.ACTIVE_SECONDS, active)
        return active

    def guest_verified(self, token: str) -> bool:
        from superset import is_feature_enabled

        if not token.strip() or not is_feature_enabled("EMBEDDED_SUPERSET"):
            return False  # Superset reads guest tokens only for embedded dashboards
        try:
            self.app.appbuilder.sm.parse_jwt_guest_token(token.strip())
        except Exception:  # noqa: BLE001 - expired, forged, malformed
            return False
        return True


class SavedRequests:
    """Which public chart's saved request a chart-data body is, by meaning, not by its bytes: a body
    naming a public dashboard and one of its charts (form_data's dashboardId and slice_id) that the
    public view's rules accept against the chart's saved query context with nothing variable used
    (no dashboard-filter clause, the saved row limit), whatever else it carries that Superset does
    not read (a browser's own form_data keys, url_params). Such a body gets the saved query's answer,
    so the replay keys it by the chart (`saved:<dashboard>:<chart>`): every variant shares one
    answer. Anything else is None (an other request). Saved contexts are read from the metadata
    database, again every RELOAD seconds (charts saved anew); bodies seen are remembered."""

    RELOAD = 60.0
    #: bodies remembered with what they are (their digest), per worker
    KNOWN = 4096

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.saved: dict[tuple[int, int], dict[str, Any]] | None = None
        self.loaded_at = 0.0
        self.loading = threading.Lock()
        self.lock = threading.Lock()
        self.known: dict[bytes, str | None] = {}

    def __call__(self, body: bytes) -> str | None:
        saved = self.current()
        digest = hashlib.sha256(body).digest()
        with self.lock:
            if digest in self.known:
                return self.known[digest]
        found = self.classify(body, saved)
        with self.lock:
            if len(self.known) >= self.KNOWN:
                self.known.clear()
            self.known[digest] = found
        return found

    @staticmethod
    def classify(body: bytes, saved: dict[tuple[int, int], dict[str, Any]]) -> str | None:
        try:
            data = json.loads(body)
        except ValueError:
            return None
        form_data = data.get("form_data") if isinstance(data, dict) else None
        if not isinstance(form_data, dict):
            return None
        dashboard_id, chart_id = form_data.get("dashboardId"), form_data.get("slice_id")
        if type(dashboard_id) is not int or type(chart_id) is not int:  # noqa: E721 - bool is no id
            return None
        context = saved.get((dashboard_id, chart_id))
        if context is None or public_queries.refuse_chart_request(data, context, (), query_fields()) is not None:
            return None
        limits = zip(data["queries"], context["queries"])
        if any(asked.get("row_limit") != kept.get("row_limit") for asked, kept in limits):
            return None  # a lower row limit: allowed, but a request of its own
        return f"saved:{dashboard_id}:{chart_id}"

    def current(self) -> dict[tuple[int, int], dict[str, Any]]:
        if self.saved is None or time.monotonic() - self.loaded_at > self.RELOAD:
            # The first load is waited for (a dashboard's first requests are all saved ones);
            # later reloads run in one request while the others use what they have.
            if self.loading.acquire(blocking=self.saved is None):
                try:
                    if self.saved is None or time.monotonic() - self.loaded_at > self.RELOAD:
                        saved = self.load()
                        with self.lock:
                            self.saved, self.known = saved, {}
                        self.loaded_at = time.monotonic()
                except Exception:  # noqa: BLE001 - the metadata database away: keep what we had
                    logger.exception("could not read the public charts' saved requests")
                    self.loaded_at = time.monotonic()
                finally:
                    self.loading.release()
        return self.saved or {}

    def load(self) -> dict[tuple[int, int], dict[str, Any]]:
        from superset.extensions import db
        from superset.models.dashboard import Dashboard

        saved = {}
        with self.app.app_context():
            public = self.app.config["AUTH_ROLE_PUBLIC"]
            for dashboard in db.session.query(Dashboard):
                if not any(role.name == public for role in dashboard.roles):
                    continue
                for chart in dashboard.slices:
                    if chart.query_context:
                        saved[(dashboard.id, chart.id)] = json.loads(chart.query_context)
        return saved


def mutate_app(app: Flask) -> None:
    """FLASK_APP_MUTATOR: runs once Superset has configured the app (its middlewares included, so
    the replay sits outside ProxyFix and flask-compress)."""
    app.session_interface = HttpsAwareSessionInterface()
    ttl = float(os.environ.get("SUPERSET_PUBLIC_CACHE_SECONDS", "2"))  # .env
    app.wsgi_app = PublicChartCache(app.wsgi_app, ttl, LoggedIn(app), SavedRequests(app), client_address)
