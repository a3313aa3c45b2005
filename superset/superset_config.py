# Superset's configuration, for both `./stack up` and docker compose (SUPERSET_CONFIG_PATH points
# here). Like the Superset repository's docker config: short, and every value from the environment
# (.env). Whatever is not set here keeps Superset's default.
import os
import sys

# This folder's own modules (mounted at /app/rt-superset in compose): the security manager, the
# rules for the public view, the rate-limit storage.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)
# The checkout's `common` package for common.client_address (who a client is: the collector's rule
# too, standard library only): in the folder above this one, natively and in compose (mounted at
# /app/common). On the path for this import only, so that no other folder of the checkout can
# shadow a module of Superset's.
sys.path.insert(0, os.path.dirname(_here))
import common.client_address  # noqa: E402,F401

sys.path.remove(os.path.dirname(_here))
import rate_limits  # noqa: E402  (registers the ratelimit+postgresql storage scheme)
from metadata_db import metadata_db_uri  # noqa: E402
from security import PublicDashboardSecurityManager, mutate_app  # noqa: E402

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]  # Superset refuses to start with its sample key
# SUPERSET_DB in the stack's Postgres, the URL built from its parts with each one percent-encoded
SQLALCHEMY_DATABASE_URI = metadata_db_uri()
SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}

# Behind the cloudflared tunnel (or any one reverse proxy): trust the one hop's X-Forwarded-For (the
# visitor's address, which the rate limits count) and X-Forwarded-Proto (https: Secure cookies).
# Never X-Forwarded-Host: cloudflared forwards the visitor's Host as is and sets X-Forwarded-Host
# only when told to rewrite Host; otherwise the visitor's own header arrives untouched, and
# trusting it would let anyone point Superset's redirects and absolute URLs at another site.
ENABLE_PROXY_FIX = True
PROXY_FIX_CONFIG = {"x_for": 1, "x_proto": 1, "x_host": 0, "x_port": 0, "x_prefix": 0}

# A live dashboard: every viewer's refresh shares one Trino query per SUPERSET_DATA_CACHE_TIMEOUT
# seconds (the dbt marts change once a minute; the live datasets set a shorter timeout of their
# own). A file cache is shared by the gunicorn workers; "fetch" lets the dashboard's auto-refresh use
# it (Superset's default "force" would query Trino once per viewer and refresh).
_cache_dir = os.path.join(os.environ.get("SUPERSET_HOME", os.path.expanduser("~/.superset")), "cache")
CACHE_CONFIG = {
    "CACHE_TYPE": "FileSystemCache",
    "CACHE_DIR": _cache_dir,
    "CACHE_KEY_PREFIX": "superset_meta_",
    "CACHE_DEFAULT_TIMEOUT": 300,
}
DATA_CACHE_CONFIG = {
    **CACHE_CONFIG,
    "CACHE_KEY_PREFIX": "superset_data_",
    "CACHE_DEFAULT_TIMEOUT": int(os.environ.get("SUPERSET_DATA_CACHE_TIMEOUT", "10")),
}
DASHBOARD_AUTO_REFRESH_MODE = "fetch"
# Relative time ranges ("Last 30 minutes") end now, not at midnight.
DEFAULT_RELATIVE_START_TIME = "now"
DEFAULT_RELATIVE_END_TIME = "now"

# The public read-only view: anonymous visitors get the Public role, which `superset init` fills with
# Superset's minimal read-only set (no SQL Lab, no datasets, no editing); DASHBOARD_RBAC then opens
# exactly the dashboards whose roles include Public (bootstrap.py sets it on ours). The login page
# stays for the admin.
AUTH_ROLE_PUBLIC = "Public"
PUBLIC_ROLE_LIKE = "Public"
FEATURE_FLAGS = {"DASHBOARD_RBAC": True}
# Anonymous visitors run the public charts' saved queries only, with at most their saved row limit
# (security.py: PublicDashboardSecurityManager; SQL Lab and the editor stay the admin's).
CUSTOM_SECURITY_MANAGER = PublicDashboardSecurityManager
ROW_LIMIT = 5000

# Rate limits (flask-limiter), counted per client address in the metadata Postgres so that every
# gunicorn worker shares one count (rate_limits.py): anonymous chart data and the logins, from
# .env (security.py). FAB's own login limit is replaced by security.py's, shared by form and API.
RATELIMIT_ENABLED = True
# Counted per client as common/client_address.py says (the collector's rule): X-Forwarded-For's
# lines joined, the last entry, else the peer; IPv6 per /64.
RATELIMIT_KEY_FUNC = rate_limits.client_key
RATELIMIT_STORAGE_URI = "ratelimit+" + SQLALCHEMY_DATABASE_URI.replace("postgresql+psycopg2", "postgresql", 1)
RATELIMIT_APPLICATION = None  # Superset's default "50 per second" would cost a count on every request
AUTH_RATE_LIMITED = False
# A storage hiccup must not take the dashboard down with it (it is logged).
RATELIMIT_SWALLOW_ERRORS = True

# Request bodies: a chart-data request is a few KB; the admin's dashboard imports stay well below.
MAX_CONTENT_LENGTH = int(os.environ.get("SUPERSET_MAX_CONTENT_LENGTH", str(1024 * 1024)))

# Cookies: HttpOnly and SameSite always, Secure whenever the request came over HTTPS (the tunnel):
# security.py's session interface, installed by FLASK_APP_MUTATOR. A fixed SESSION_COOKIE_SECURE
# would break logins over plain http on loopback.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
FLASK_APP_MUTATOR = mutate_app

# Content Security Policy (flask-talisman, on by default in Superset 6; stated here so that it
# stays on): scripts only from Superset itself (nonces), no third-party images, tiles or fonts,
# no framing by other sites. HSTS is sent on HTTPS requests (the tunnel) only. The one request it
# blocks is Superset's telemetry image (scarf.sh, built into the frontend): a console message.
TALISMAN_ENABLED = True
TALISMAN_CONFIG = {
    "content_security_policy": {
        "base-uri": ["'self'"],
        "default-src": ["'self'"],
        "img-src": ["'self'", "blob:", "data:"],
        "worker-src": ["'self'", "blob:"],
        "connect-src": ["'self'"],
        "object-src": "'none'",
        "style-src": ["'self'", "'unsafe-inline'"],
        "font-src": ["'self'"],
        "script-src": ["'self'", "'strict-dynamic'"],
        "frame-ancestors": ["'self'"],
        "form-action": ["'self'"],
    },
    "content_security_policy_nonce_in": ["script-src"],
    "force_https": False,
    "session_cookie_secure": False,
}

# No Celery: no async queries, alerts or thumbnails in this stack.
CELERY_CONFIG = None
