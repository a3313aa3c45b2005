# Superset's configuration, for both `./stack up` and docker compose (SUPERSET_CONFIG_PATH points
# here). Like the Superset repository's docker config: short, and every value from the environment
# (.env). Whatever is not set here keeps Superset's default.
import os

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]  # Superset refuses to start with its sample key
SQLALCHEMY_DATABASE_URI = os.environ["SUPERSET_METADATA_DB_URI"]  # SUPERSET_DB in the stack's Postgres
SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}

# Behind the cloudflared tunnel (or any one reverse proxy): trust its X-Forwarded-For/-Proto/-Host,
# so redirects and CSRF referrer checks use the public https URL.
ENABLE_PROXY_FIX = True

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
# Anonymous chart-data requests may ask their chart's dataset for rows: keep answers small.
ROW_LIMIT = 5000

# No Celery: no async queries, alerts or thumbnails in this stack.
CELERY_CONFIG = None
