"""Anonymous chart-data answers kept for a moment in each gunicorn worker (WSGI middleware).

Superset's own cache spares Trino, but every chart-data request still costs Superset tens of
milliseconds of Python (security checks, metadata queries, JSON): a dashboard of 8 charts
refreshed every 10 s by 200 visitors is 160 requests a second, several cores' worth. Anonymous
visitors all get the same answer to the same request (one role, the saved queries only), so the
answer to a byte-identical request body is replayed for SUPERSET_PUBLIC_CACHE_SECONDS (.env;
0 turns this off), at the cost of that much more staleness. Once it is older, it is still the
answer while a thread of its own asks Superset again (stale-while-revalidate, for at most
MAX_STALE seconds): measured, a refresh that waits for Trino in a request thread holds one of
gunicorn's few threads for up to a second, and every visitor queues behind them. Only the chart's
data is replayed stale: an expired failure or refusal is asked again, so that a chart whose source
recovered is not shown broken for MAX_STALE more seconds.

What is kept: 200 (the chart's data), 403 (the public view refuses the same body to every
anonymous visitor: a client repeating a forced or ad-hoc request gets the refusal without taking
Superset's threads) and 400 (the chart's query failed: Superset caches no failure, and every
viewer's refresh of a broken chart would reach Trino). 429 (per address) and 5xx are never kept,
nor is Set-Cookie.

Encodings: Superset compresses answers (flask-compress, inside the Flask app) for whatever the
client offers. The replay asks Superset without Accept-Encoding, keeps the identity body, and
encodes each answer for the client at hand (zstd, br or gzip, as offered with the highest q;
each encoding made once per answer): no client gets an encoding it did not offer.

Two kinds of anonymous requests, each with its own share:
- saved: the body asks one of the public charts' saved queries, as a dashboard in any browser
  posts it (`is_saved`, security.SavedRequests: judged by the public view's rules against the
  chart's saved query context, whatever it carries that Superset does not read), and is keyed by
  that chart, so that every variant shares one answer. Their answers live in a segment of their own
  (SAVED_BYTES), so ever-new bodies only evict each other. Without an answer yet, identical
  requests wait for the one in flight; at most MAX_ASKING ask Superset from request threads at
  once and MAX_WAITING more wait their turn, one more is told busy (429).
- other: anything else (dashboard-filter values, refused requests...), ever-new bodies included.
  Per worker, at most OTHER_ASKING ask Superset at once and OTHER_WAITING wait (briefly) for a
  turn, OTHER_PER_ADDRESS of them from one client address, and OTHER_PER_MINUTE answers that may
  have cost a query (a token bucket, Trino's share: refusals are free); beyond, 429 busy at
  once. No request waits for an identical one in flight (busy too), and their stale answers are
  refreshed only within the same bounds.

A request counts as logged in (and passes straight through) only when `is_logged_in` verified
it (security.py: a signed session or token of an active user); a cookie or header that is merely
present changes nothing. Answers carry X-Public-Replay: hit, stale, miss or busy.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

PATH = "/api/v1/chart/data"
#: A dashboard's chart request is a few KB; larger bodies are left to Superset (and its 413).
MAX_BODY = 64 * 1024
#: Bytes of answers per worker, per kind (each encoding of an answer counted).
SAVED_BYTES = 16 * 1024 * 1024
OTHER_BYTES = 16 * 1024 * 1024
#: An answer older than this (Superset failing to answer again, say) is never replayed.
MAX_STALE = 30.0
#: Background refreshes at once per worker (beyond, a stale answer waits for the next request).
MAX_REFRESHERS = 4
#: Saved requests per worker asking Superset from a request thread at once, and waiting to: a
#: dashboard's first load after a quiet spell asks for its 8 charts at once (6 at a time from a
#: browser, any number of them on one worker) and each waits its turn. Only cold loads and misses
#: take turns: every variant of a saved request shares its chart's answer (no client can make a
#: saved miss at will), so abusers cannot hold these; other requests (OTHER_*) are bounded apart.
MAX_ASKING = 1
MAX_WAITING = 5
#: Longest a request waits for its turn to ask Superset before it is told busy.
WAIT_SECONDS = 30.0
#: Other anonymous requests per worker asking Superset at once, waiting to (at most this long), from
#: one address (asking or waiting: a browser asks 6 at a time), and answered per minute when they
#: may have cost a query (Trino's share; the burst lets one visitor apply a filter to 8 charts).
OTHER_ASKING = 1
OTHER_WAITING = 3
OTHER_WAIT_SECONDS = 5.0
OTHER_PER_ADDRESS = 3
OTHER_PER_MINUTE = 20
OTHER_BURST = 10
#: Answers that cost no query: the public view's refusal, a limit's 429.
FREE = ("403 ", "429 ")
#: Answers the same for every anonymous visitor: the chart's data, its failure, the refusal.
KEPT = ("200 ", "400 ", "403 ")
#: Answers still replayed once expired, while a refresh runs beside (the chart's data only).
STALE_OK = ("200 ",)
BUSY = (
    "429 TOO MANY REQUESTS",
    [("Content-Type", "application/json"), ("Retry-After", "1")],
    b'{"message": "The public dashboard is busy: try again in a moment."}',
)
#: Encodings offered to clients, in the server's order of preference at equal q (flask-compress's).
ENCODINGS = ("zstd", "br", "gzip")
#: Smaller answers are sent as they are (flask-compress's COMPRESS_MIN_SIZE).
MIN_COMPRESS = 500
#: Headers that describe one encoding of the body: set per answer.
PER_ENCODING = frozenset({"content-length", "content-encoding", "etag", "vary", "set-cookie", "x-public-replay"})

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]


def _compressors() -> dict[str, Callable[[bytes], bytes]]:
    found: dict[str, Callable[[bytes], bytes]] = {"gzip": lambda data: gzip.compress(data, 6, mtime=0)}
    try:
        import brotli  # type: ignore[import-not-found]

        found["br"] = lambda data: brotli.compress(data, quality=4)
    except ImportError:
        pass
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found]
        except ImportError:
            zstd = None
    if zstd is not None:
        found["zstd"] = lambda data: zstd.compress(data, 3)
    return found


COMPRESSORS = _compressors()
AVAILABLE = tuple(e for e in ENCODINGS if e in COMPRESSORS)


def choose_encoding(accept_encoding: str, available: Iterable[str] = ENCODINGS) -> str | None:
    """The encoding to send for an Accept-Encoding header, or None (identity): the offered coding
    with the highest q above 0 ('*' stands for any coding not named), ties in the server's order."""
    offered: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        name, _, params = part.partition(";")
        name, q = name.strip(), 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if name:
            offered[name] = q
    best, best_q = None, 0.0
    for name in available:
        q = offered.get(name, offered.get("*", 0.0))
        if q > best_q:
            best, best_q = name, q
    return best


@dataclass
class Entry:
    expires: float
    status: str
    headers: Headers
    body: bytes
    saved: bool
    key: bytes
    encoded: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + sum(map(len, self.encoded.values()))


class Segment:
    """An LRU of entries within a byte budget (the caller holds the cache's lock)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()

    def put(self, key: bytes, entry: Entry) -> None:
        self.drop(key)
        self.entries[key] = entry
        self.size += entry.size
        self.trim()

    def drop(self, key: bytes) -> None:
        if (entry := self.entries.pop(key, None)) is not None:
            self.size -= entry.size

    def grew(self, by: int) -> None:
        self.size += by
        self.trim()

    def trim(self) -> None:
        while self.size > self.max_bytes and self.entries:
            self.drop(next(iter(self.entries)))


class OtherTurns:
    """Turns to ask Superset for other requests: `asking` at once and `waiting` more (for at most
    OTHER_WAIT_SECONDS; a refresh never waits), at most `per_address` of them from one address, and
    a token bucket of `per_minute` (burst `burst`): a turn needs a token, and an answer that may
    have cost a query (any but the public view's refusal and 429) takes it. Beyond, no turn."""

    def __init__(self, asking: int, waiting: int, per_address: int, per_minute: float, burst: int) -> None:
        self.asking, self.waiting, self.per_address = asking, waiting, per_address
        self.rate, self.burst = per_minute / 60.0, burst
        self.cond = threading.Condition()
        self.pending: dict[str, int] = {}
        self.asking_now = self.waiting_now = 0
        self.tokens, self.at = float(burst), time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, address: str, wait: float) -> bool:
        with self.cond:
            self._refill()
            if self.pending.get(address, 0) >= self.per_address or self.tokens < 1:
                return False
            if self.asking_now >= self.asking:
                if wait <= 0 or self.waiting_now >= self.waiting:
                    return False
                self.waiting_now += 1
                self.pending[address] = self.pending.get(address, 0) + 1
                try:
                    if not self.cond.wait_for(lambda: self.asking_now < self.asking, timeout=wait):
                        return False
                finally:
                    self.waiting_now -= 1
                    self._forget(address)
                self._refill()
                if self.tokens < 1:
                    return False
            self.asking_now += 1
            self.pending[address] = self.pending.get(address, 0) + 1
            return True

    def give_back(self, address: str, status: str) -> None:
        with self.cond:
            if not status.startswith(FREE):
                self._refill()
                self.tokens -= 1
            self.asking_now -= 1
            self._forget(address)
            self.cond.notify()

    def _forget(self, address: str) -> None:
        self.pending[address] -= 1
        if not self.pending[address]:
            del self.pending[address]


def peer_address(environ: dict) -> str:
    return str(environ.get("REMOTE_ADDR", ""))


class PublicChartCache:
    """WSGI middleware in front of Superset's app; see the module docstring."""

    def __init__(
        self,
        wsgi_app: Callable,
        ttl: float,
        is_logged_in: Callable[[dict], bool],
        is_saved: Callable[[bytes], str | None] = lambda body: None,
        address: Callable[[dict], str] = peer_address,
    ) -> None:
        self.wsgi_app, self.ttl, self.is_logged_in, self.is_saved, self.address = (
            wsgi_app,
            ttl,
            is_logged_in,
            is_saved,
            address,
        )
        self.segments = {True: Segment(SAVED_BYTES), False: Segment(OTHER_BYTES)}
        self.lock = threading.Lock()
        self.in_flight: dict[bytes, threading.Lock] = {}
        self.refreshers = threading.BoundedSemaphore(MAX_REFRESHERS)
        self.asking = threading.BoundedSemaphore(MAX_ASKING)
        self.waiting = 0
        self.others = OtherTurns(OTHER_ASKING, OTHER_WAITING, OTHER_PER_ADDRESS, OTHER_PER_MINUTE, OTHER_BURST)

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
            and not self.is_logged_in(environ)
        )

    def lookup(self, key: bytes) -> tuple[bool, Entry] | None:
        """(fresh, entry) for a key, or None."""
        with self.lock:
            for segment in self.segments.values():
                if (entry := segment.entries.get(key)) is not None:
                    now = time.monotonic()
                    if entry.expires + (MAX_STALE if entry.status.startswith(STALE_OK) else 0) < now:
                        segment.drop(key)
                        return None
                    segment.entries.move_to_end(key)
                    return entry.expires >= now, entry
            return None

    def store(self, key: bytes, entry: Entry) -> None:
        with self.lock:
            self.segments[not entry.saved].drop(key)
            self.segments[entry.saved].put(key, entry)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if not self.cacheable(environ):
            return self.wsgi_app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        accept = str(environ.pop("HTTP_ACCEPT_ENCODING", ""))  # Superset answers identity
        environ["wsgi.input"] = io.BytesIO(body)
        # A saved request is keyed by what it asks (every variant of it gets one answer), and only
        # as JSON: Superset refuses another content type, and that refusal must not become the
        # saved answer. Anything else is keyed by its bytes.
        json_body = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower() == "application/json"
        saved_as = self.is_saved(body) if json_body else None
        saved = saved_as is not None
        if saved_as is not None:
            key = hashlib.sha256(b"saved\0" + saved_as.encode()).digest()
        else:
            key = hashlib.sha256(environ.get("QUERY_STRING", "").encode() + b"\0" + body).digest()
        found = self.lookup(key)
        if found and found[0]:
            return self.answer(found[1], accept, "hit", start_response)
        if found:
            # Stale: answer with it now; one refresh runs beside, on a thread of its own, so that
            # no request thread waits for Trino while answers are at hand.
            self.refresh_beside(key, environ, body, found[1].saved)
            return self.answer(found[1], accept, "stale", start_response)
        with self.lock:
            flight = self.in_flight.setdefault(key, threading.Lock())
        if saved:
            flight.acquire()  # nothing to answer with yet: wait for the request in flight
        elif not flight.acquire(blocking=False):
            return self.answer(None, accept, "busy", start_response)
        again = self.lookup(key)
        if again and again[0]:
            self._land(key, flight)
            return self.answer(again[1], accept, "hit", start_response)
        address = self.address(environ)
        if not (self.take_turn() if saved else self.others.take(address, OTHER_WAIT_SECONDS)):
            self._land(key, flight)
            return self.answer(None, accept, "busy", start_response)
        status = "500 "
        try:
            status, headers, answer, entry = self.fetch(key, environ, flight, saved)
        finally:
            if saved:
                self.asking.release()
            else:
                self.others.give_back(address, status)
        if entry is not None:
            return self.answer(entry, accept, "miss", start_response)
        start_response(status, [*headers, ("X-Public-Replay", "miss")])
        return [answer]

    def refresh_beside(self, key: bytes, environ: dict, body: bytes, saved: bool) -> None:
        """Starts one refresh of a stale answer on a thread of its own, within the bounds (an
        other request's refresh takes an other turn, or waits for a later request)."""
        if not self.refreshers.acquire(blocking=False):
            return
        with self.lock:
            flight = self.in_flight.setdefault(key, threading.Lock())
        if not flight.acquire(blocking=False):  # a refresh or first request is under way
            self.refreshers.release()
            return
        address = self.address(environ)
        if not saved and not self.others.take(address, 0):
            self._land(key, flight)
            self.refreshers.release()
            return
        copy = {**environ, "wsgi.input": io.BytesIO(body)}
        threading.Thread(target=self.refresh, args=(key, copy, flight, saved, address), daemon=True).start()

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

    def refresh(self, key: bytes, environ: dict, flight: threading.Lock, saved: bool, address: str) -> None:
        status = "500 "
        try:
            status = self.fetch(key, environ, flight, saved)[0]
        finally:
            self.refreshers.release()
            if not saved:
                self.others.give_back(address, status)

    def fetch(
        self, key: bytes, environ: dict, flight: threading.Lock, saved: bool
    ) -> tuple[str, Headers, bytes, Entry | None]:
        """Asks Superset (the flight is held), keeps an answer the same for everyone, lands the flight."""
        try:
            status, headers, answer = self.call(environ)
            encoded = any(k.lower() == "content-encoding" and v.lower() != "identity" for k, v in headers)
            if not status.startswith(KEPT) or encoded:
                return status, headers, answer, None
            kept = [(k, v) for k, v in headers if k.lower() not in PER_ENCODING]
            entry = Entry(time.monotonic() + self.ttl, status, kept, answer, saved, key)
            self.store(key, entry)
            return status, headers, answer, entry
        finally:
            self._land(key, flight)

    def _land(self, key: bytes, flight: threading.Lock) -> None:
        flight.release()
        with self.lock:  # keep the map as small as the requests in flight
            if not flight.locked():
                self.in_flight.pop(key, None)

    def call(self, environ: dict) -> tuple[str, Headers, bytes]:
        seen: dict[str, Any] = {}

        def capture(status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
            seen["status"], seen["headers"] = status, headers
            return lambda data: None

        result = self.wsgi_app(environ, capture)
        try:
            answer = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return seen["status"], seen["headers"], answer

    def encoded(self, entry: Entry, encoding: str) -> bytes:
        """The entry's body in an encoding, made once per entry (counted in its segment's bytes)."""
        with self.lock:
            if (data := entry.encoded.get(encoding)) is not None:
                return data
        data = COMPRESSORS[encoding](entry.body)
        with self.lock:
            if encoding not in entry.encoded:
                entry.encoded[encoding] = data
                segment = self.segments[entry.saved]
                if segment.entries.get(entry.key) is entry:  # else already evicted: nothing to count
                    segment.grew(len(data))
        return data

    def answer(self, entry: Entry | None, accept: str, how: str, start_response: StartResponse) -> list[bytes]:
        if entry is None:
            status, headers, body = BUSY
            start_response(status, [*headers, ("Content-Length", str(len(body))), ("X-Public-Replay", how)])
            return [body]
        headers = [*entry.headers, ("Vary", "Accept-Encoding")]
        body = entry.body
        if len(body) >= MIN_COMPRESS and (encoding := choose_encoding(accept, AVAILABLE)):
            body = self.encoded(entry, encoding)
            headers.append(("Content-Encoding", encoding))
        start_response(entry.status, [*headers, ("Content-Length", str(len(body))), ("X-Public-Replay", how)])
        return [body]
