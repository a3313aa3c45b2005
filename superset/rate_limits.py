"""flask-limiter's counters in Postgres (Superset's metadata database), shared by every worker.

flask-limiter keeps its counters in a storage of the `limits` library, which ships memory, Redis,
Memcached and MongoDB storages. Memory counts per gunicorn worker (a limit of N lets workers x N
through, and each compose replica as many again); this stack runs none of the others. Superset
already depends on its metadata Postgres, so the counters live there: one upsert per limited
request (~0.2 ms on loopback), in an UNLOGGED table (counters need no crash safety).

Importing this module registers the scheme: RATELIMIT_STORAGE_URI = "ratelimit+postgresql://
user:password@host:port/database". Fixed windows only (flask-limiter's default strategy).

`client_key` is the limits' key (RATELIMIT_KEY_FUNC): the client by common/client_address.py, the
rule the collector counts by too.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg2
import psycopg2.errors
from flask import request
from limits.storage import Storage

from common.client_address import client_address, rate_limit_key

TABLE = "rate_limit_counters"
#: Expired counters are deleted by one request in this many (the table stays as small as the
#: number of addresses seen within the longest window).
PURGE_EVERY = 500


def client_key() -> str:
    """The request's rate-limit key: its client (one trusted proxy, as ProxyFix x_for=1 trusts; the
    peer is the address before ProxyFix rewrote it), an IPv6 client by its /64."""
    environ = request.environ
    peer = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", environ.get("REMOTE_ADDR"))
    return rate_limit_key(client_address(request.headers.getlist("X-Forwarded-For"), peer))


class PostgresStorage(Storage):
    """A `limits` storage: one row per counter (key, hits, expires_at)."""

    STORAGE_SCHEME = ["ratelimit+postgresql"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.dsn = "postgresql" + uri[len("ratelimit+postgresql") :]
        # psycopg2 connections are not for concurrent use: one per gunicorn thread.
        self.local = threading.local()
        self.created = False

    @property
    def base_exceptions(self) -> type[Exception]:
        return psycopg2.Error

    def _connection(self) -> Any:
        conn = getattr(self.local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg2.connect(self.dsn, application_name="superset-rate-limits")
            conn.autocommit = True
            self.local.conn = conn
        return conn

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        if not self.created:
            self._create()
        try:
            return self._run(sql, params)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # A connection dropped by a Postgres restart: one fresh try.
            self.local.conn = None
            return self._run(sql, params)

    def _run(self, sql: str, params: tuple) -> list[tuple]:
        with self._connection().cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else [(cur.rowcount,)]

    def _create(self) -> None:
        try:
            self._run(
                f"CREATE UNLOGGED TABLE IF NOT EXISTS {TABLE} "
                "(key text PRIMARY KEY, hits integer NOT NULL, expires_at timestamptz NOT NULL)",
                (),
            )
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateTable):
            pass  # another worker created it at the same moment
        self.created = True

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        if random.randrange(PURGE_EVERY) == 0:
            self._execute(f"DELETE FROM {TABLE} WHERE expires_at < now()")
        ((hits,),) = self._execute(
            f"INSERT INTO {TABLE} AS c (key, hits, expires_at) "
            "VALUES (%s, %s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (key) DO UPDATE SET "
            "hits = CASE WHEN c.expires_at <= now() THEN excluded.hits ELSE c.hits + excluded.hits END, "
            "expires_at = CASE WHEN c.expires_at <= now() THEN excluded.expires_at ELSE c.expires_at END "
            "RETURNING hits",
            (key, amount, expiry),
        )
        return int(hits)

    def get(self, key: str) -> int:
        rows = self._execute(f"SELECT hits FROM {TABLE} WHERE key = %s AND expires_at > now()", (key,))
        return int(rows[0][0]) if rows else 0

    def get_expiry(self, key: str) -> float:
        ((expiry,),) = self._execute(
            f"SELECT extract(epoch FROM coalesce((SELECT expires_at FROM {TABLE} WHERE key = %s), now()))",
            (key,),
        )
        return float(expiry)

    def check(self) -> bool:
        try:
            self._execute("SELECT 1")
            return True
        except psycopg2.Error:
            return False

    def reset(self) -> int | None:
        ((count,),) = self._execute(f"DELETE FROM {TABLE}")
        return int(count)

    def clear(self, key: str) -> None:
        self._execute(f"DELETE FROM {TABLE} WHERE key = %s", (key,))
