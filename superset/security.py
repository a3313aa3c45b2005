"""This project's Superset security manager (CUSTOM_SECURITY_MANAGER) and HTTP hardening.

- Anonymous visitors (the Public role, DASHBOARD_RBAC) run the public charts' saved queries and
  nothing else: every chart-data request is compared with the chart's saved query context by
  `public_queries` (Superset checks only guest tokens, and only their metrics and columns);
  legacy `explore_json` requests are refused outright.
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
import json
import logging
import os
import threading
import time
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

from superset.security import SupersetSecurityManager

logger = logging.getLogger(__name__)

#: Per client address (X-Forwarded-For from the one proxy in front, else the peer). A dashboard
#: tab asks ~8 charts per refresh (10 s): ~50 a minute.
CHART_DATA_LIMIT = os.environ.get("SUPERSET_RATE_LIMIT_CHART_DATA", "120 per minute")
#: Form login and API login together, per client address (POST only: the page itself is free).
LOGIN_LIMIT = os.environ.get("SUPERSET_RATE_LIMIT_LOGIN", "10 per minute")


def is_anonymous() -> bool:
    """True inside a request served to nobody in particular, or to nobody known yet (CLI commands
    and jobs have no request: they are not visitors)."""
    if not has_request_context():
        return False
    user = getattr(g, "user", None)
    return user is None or user.is_anonymous


def refused(reason: str) -> SupersetSecurityException:
    return SupersetSecurityException(
        SupersetError(
            error_type=SupersetErrorType.DASHBOARD_SECURITY_ACCESS_ERROR,
            message=f"The public dashboard runs its charts' saved queries only: {reason}",
            level=ErrorLevel.WARNING,
        )
    )


def query_dict(query: Any) -> dict[str, Any]:
    """A normalised QueryObject as plain JSON data: what it runs, time range and offsets included."""
    data = {
        **query.to_dict(),
        "time_range": query.time_range,
        "time_offsets": query.time_offsets,
        "annotation_layers": query.annotation_layers,
    }
    return json.loads(public_queries.canonical(data))


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
    PUBLIC_ROLE_PERMISSIONS = SupersetSecurityManager.PUBLIC_ROLE_PERMISSIONS - {
        ("can_write", "DashboardFilterStateRestApi")
    }

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


class HttpsAwareSessionInterface(SecureCookieSessionInterface):
    """Marks the session cookie Secure when the request came over HTTPS (behind the tunnel, from
    X-Forwarded-Proto through ProxyFix), and leaves it usable over plain http on loopback."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or (has_request_context() and request.is_secure))


def client_address(environ: dict) -> str:
    """The client's address as Superset's rate limits count it, read before ProxyFix runs (the
    replay sits outside it): PROXY_FIX_CONFIG's one trusted hop, the last X-Forwarded-For entry,
    else the peer."""
    forwarded = [part.strip() for part in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    return forwarded[-1] or str(environ.get("REMOTE_ADDR", ""))


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
    """Whether a chart-data body is one of the public charts' saved requests as the dashboard
    posts them: the chart's saved query context with the dashboard's and the chart's ids in
    form_data, compared as canonical JSON. Read from the metadata database, again every RELOAD
    seconds (charts saved anew); the replay keeps their answers and turns apart from the rest."""

    RELOAD = 60.0

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.texts: frozenset[str] | None = None
        self.loaded_at = 0.0
        self.loading = threading.Lock()

    def __call__(self, body: bytes) -> bool:
        try:
            text = public_queries.canonical(json.loads(body))
        except ValueError:
            return False
        return text in self.current()

    def current(self) -> frozenset[str]:
        if self.texts is None or time.monotonic() - self.loaded_at > self.RELOAD:
            # The first load is waited for (a dashboard's first requests are all saved ones);
            # later reloads run in one request while the others use the set they have.
            if self.loading.acquire(blocking=self.texts is None):
                try:
                    if self.texts is None or time.monotonic() - self.loaded_at > self.RELOAD:
                        self.texts, self.loaded_at = self.load(), time.monotonic()
                except Exception:  # noqa: BLE001 - the metadata database away: keep what we had
                    logger.exception("could not read the public charts' saved requests")
                    self.loaded_at = time.monotonic()
                finally:
                    self.loading.release()
        return self.texts or frozenset()

    def load(self) -> frozenset[str]:
        from superset.extensions import db
        from superset.models.dashboard import Dashboard

        texts = set()
        with self.app.app_context():
            public = self.app.config["AUTH_ROLE_PUBLIC"]
            for dashboard in db.session.query(Dashboard):
                if not any(role.name == public for role in dashboard.roles):
                    continue
                for chart in dashboard.slices:
                    if not chart.query_context:
                        continue
                    context = json.loads(chart.query_context)
                    context.setdefault("form_data", {}).update(dashboardId=dashboard.id, slice_id=chart.id)
                    texts.add(public_queries.canonical(context))
        return frozenset(texts)


def mutate_app(app: Flask) -> None:
    """FLASK_APP_MUTATOR: runs once Superset has configured the app (its middlewares included, so
    the replay sits outside ProxyFix and flask-compress)."""
    app.session_interface = HttpsAwareSessionInterface()
    ttl = float(os.environ.get("SUPERSET_PUBLIC_CACHE_SECONDS", "2"))  # .env
    app.wsgi_app = PublicChartCache(app.wsgi_app, ttl, LoggedIn(app), SavedRequests(app), client_address)
