"""Anonymous chart-data answers kept for a moment in each gunicorn worker (WSGI middleware).

Superset's own cache spares Trino, but every chart-data request still costs Superset tens of
milliseconds of Python (security checks, metadata queries, JSON): a dashboard of 8 charts
refreshed every 10 s by 200 visitors is 160 requests a second, several cores' worth. Anonymous
visitors all get the same answer to the same request (one role, the saved queries only), so the
200 answer to a byte-identical request body is replayed for SUPERSET_PUBLIC_CACHE_SECONDS (.env;
0 turns this off), at the cost of that much more staleness. Once it is older, it is still the
answer while a thread of its own asks Superset again (stale-while-revalidate, for at most
MAX_STALE seconds): measured, a refresh that waits for Trino in a request thread holds one of
gunicorn's few threads for up to a second, and every visitor queues behind them. Each answer
reaches Superset about once per period per worker. Without any answer yet, identical requests
wait for the one in flight instead of all reaching Superset.

A 403 is kept too: the public view refuses the same body to every anonymous visitor, and
replaying the refusal keeps a client repeating a forced or ad-hoc request from taking Superset's
threads (measured: 50 of them starved 200 viewers). So is a 400 (the chart's query failed, e.g.
a source down): Superset caches no failure, and every viewer's refresh of a broken chart would
reach Superset and Trino; the refresh beside retries it each period. 429 (per address) and 5xx
are never kept, nor is Set-Cookie. At most MAX_ASKING anonymous requests per worker
ask Superset from request threads at once and MAX_WAITING more wait their turn; one more is
answered 429 at once ("busy"), so clients sending ever-new requests can't hold every thread
either while viewers are answered from here. Requests from a logged-in session or with an
Authorization header pass straight through. Each worker keeps at most MAX_BYTES of answers.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

PATH = "/api/v1/chart/data"
#: A dashboard's chart request is a few KB; larger bodies are left to Superset (and its 413).
MAX_BODY = 64 * 1024
MAX_BYTES = 32 * 1024 * 1024
#: An answer older than this (Superset failing to answer again, say) is never replayed.
MAX_STALE = 30.0
#: Background refreshes at once per worker (beyond, a stale answer waits for the next request).
MAX_REFRESHERS = 4
#: Anonymous requests per worker asking Superset from a request thread at once, and waiting to:
#: gunicorn runs 8 threads, so at least two stay free for answers from here whatever clients
#: send (measured under 50 abusive clients). A dashboard's first load after a quiet spell asks
#: for its 8 charts at once (6 at a time from a browser) and waits its turn.
MAX_ASKING = 1
MAX_WAITING = 5
#: Longest a request waits for its turn to ask Superset before it is told busy.
WAIT_SECONDS = 30.0
#: Answers the same for every anonymous visitor: the chart's data, its failure, the refusal.
KEPT = ("200 ", "400 ", "403 ")
BUSY = (
    "429 TOO MANY REQUESTS",
    [("Content-Type", "application/json"), ("Retry-After", "1")],
    b'{"message": "The public dashboard is busy: try again in a moment."}',
)

StartResponse = Callable[..., Any]


class PublicChartCache:
    """WSGI middleware in front of Superset's app; see the module docstring."""

    def __init__(self, wsgi_app: Callable, ttl: float, is_logged_in: Callable[[dict], bool]) -> None:
        self.wsgi_app, self.ttl, self.is_logged_in = wsgi_app, ttl, is_logged_in
        self.entries: OrderedDict[bytes, tuple[float, str, list[tuple[str, str]], bytes]] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()
        self.in_flight: dict[bytes, threading.Lock] = {}
        self.refreshers = threading.BoundedSemaphore(MAX_REFRESHERS)
        self.asking = threading.BoundedSemaphore(MAX_ASKING)
        self.waiting = 0

    def cacheable(self, environ: dict) -> bool:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        return (
            self.ttl > 0
            and environ.get("REQUEST_METHOD") == "POST"
            and environ.get("PATH_INFO") == PATH
            and 0 < length <= MAX_BODY
            and not environ.get("HTTP_AUTHORIZATION")
            and not environ.get("HTTP_X_GUESTTOKEN")
            and not self.is_logged_in(environ)
        )

    def lookup(self, key: bytes) -> tuple[bool, tuple[str, list[tuple[str, str]], bytes]] | None:
        """(fresh, answer) for a key, or None."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            now = time.monotonic()
            if entry[0] + MAX_STALE < now:
                self._drop(key)
                return None
            self.entries.move_to_end(key)
            return entry[0] >= now, (entry[1], entry[2], entry[3])

    def store(self, key: bytes, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        with self.lock:
            if key in self.entries:
                self._drop(key)
            self.entries[key] = (time.monotonic() + self.ttl, status, headers, body)
            self.size += len(body)
            while self.size > MAX_BYTES and self.entries:
                self._drop(next(iter(self.entries)))

    def _drop(self, key: bytes) -> None:
        self.size -= len(self.entries.pop(key)[3])

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if not self.cacheable(environ):
            return self.wsgi_app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        environ["wsgi.input"] = io.BytesIO(body)
        key = hashlib.sha256(environ.get("QUERY_STRING", "").encode() + b"\0" + body).digest()
        found = self.lookup(key)
        if found and found[0]:
            return self.replay(found[1], start_response)
        with self.lock:
            flight = self.in_flight.setdefault(key, threading.Lock())
        if found:
            # Stale: answer with it now; one refresh runs beside, on a thread of its own, so that
            # no request thread waits for Trino while answers are at hand.
            if self.refreshers.acquire(blocking=False):
                if flight.acquire(blocking=False):
                    copy = {**environ, "wsgi.input": io.BytesIO(body)}
                    threading.Thread(target=self.refresh, args=(key, copy, flight), daemon=True).start()
                else:
                    self.refreshers.release()
            return self.replay(found[1], start_response)
        flight.acquire()  # nothing to answer with yet: wait for the request in flight
        again = self.lookup(key)
        if again and again[0]:
            self._land(key, flight)
            return self.replay(again[1], start_response)
        if not self.take_turn():
            self._land(key, flight)
            return self.replay(BUSY, start_response)
        try:
            status, headers, answer = self.fetch(key, environ, flight)
        finally:
            self.asking.release()
        start_response(status, headers)
        return [answer]

    def take_turn(self) -> bool:
        """A turn to ask Superset: at once, after up to MAX_WAITING others, or not at all (busy)."""
        if self.asking.acquire(blocking=False):
            return True
        with self.lock:
            if self.waiting >= MAX_WAITING:
                return False
            self.waiting += 1
        try:
            return self.asking.acquire(timeout=WAIT_SECONDS)
        finally:
            with self.lock:
                self.waiting -= 1

    def refresh(self, key: bytes, environ: dict, flight: threading.Lock) -> None:
        try:
            self.fetch(key, environ, flight)
        finally:
            self.refreshers.release()

    def fetch(self, key: bytes, environ: dict, flight: threading.Lock) -> tuple[str, list[tuple[str, str]], bytes]:
        """Asks Superset (the flight is held), keeps a 200 answer, lands the flight."""
        try:
            status, headers, answer = self.call(environ)
            if status.startswith(KEPT):
                self.store(key, status, [(k, v) for k, v in headers if k.lower() != "set-cookie"], answer)
            return status, headers, answer
        finally:
            self._land(key, flight)

    def _land(self, key: bytes, flight: threading.Lock) -> None:
        flight.release()
        with self.lock:  # keep the map as small as the requests in flight
            if not flight.locked():
                self.in_flight.pop(key, None)

    def call(self, environ: dict) -> tuple[str, list[tuple[str, str]], bytes]:
        seen: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            seen["status"], seen["headers"] = status, headers
            return lambda data: None

        result = self.wsgi_app(environ, capture)
        try:
            answer = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return seen["status"], seen["headers"], answer

    @staticmethod
    def replay(hit: tuple[str, list[tuple[str, str]], bytes], start_response: StartResponse) -> list[bytes]:
        status, headers, body = hit
        start_response(status, list(headers))
        return [body]
