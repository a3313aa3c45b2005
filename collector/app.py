"""The collector's ASGI application: events over HTTP into the `user_events` topic.

`POST /v1/events` takes a JSON array of events of the public contract (common/contract.py, the
same code the consumer validates with) and produces each valid one to Kafka, keyed by its user
id, with the idempotent producer. It answers:

- 202 `{"accepted": n, "rejected": m, "errors": [{"index", "reason", "error"}]}` once Kafka has
  acknowledged every accepted event (nothing accepted is lost); the rejected ones are not sent:
  those the contract refuses, and those of a type not in COLLECTOR_EVENT_TYPES (reason `event_type`);
- 400 when the body is not a JSON array of objects; 403 when the request's Origin is not allowed
  (COLLECTOR_CORS_ORIGINS, or the page's own origin) or its User-Agent is a bot's (CrawlerDetect's
  list, or none at all); 413 over COLLECTOR_MAX_BODY_BYTES or COLLECTOR_MAX_EVENTS; 429 (with
  Retry-After) over a client's rate (common/client_address.py says who the client is); 503 when
  Kafka did not acknowledge in time or its queue is full: the client sends the same events again,
  and the consumer counts an event_id once.

Also CORS for the allowed origins, the tracker (`GET /shop/track.js`) and the demo shop that uses it
(`GET /shop/`). `/healthz` (200 while Kafka answers) and `/metrics` (Prometheus) are served on
COLLECTOR_METRICS_PORT only, never on this public port. A plain ASGI callable: no framework between
the server and these few routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from crawlerdetect import CrawlerDetect
from prometheus_client import CollectorRegistry, Counter, Histogram

from common.client_address import client_address, rate_limit_key
from common.contract import MAY_REPEAT_HEADER, InvalidMessage, decode_event
from common.metrics import MetricsServer
from common.settings import Settings

log = logging.getLogger("collector")

_raw_array = msgspec.json.Decoder(list[msgspec.Raw])
HEALTH_CHECK_SECONDS = 10.0

STATIC = Path(__file__).parent / "static"
#: what GET serves: path -> (file, content type); read once at start, nothing else on disk is reachable
#: (all under /shop/: behind the tunnel they share one hostname with Superset, which owns /static/)
FILES = {
    "/shop/": ("shop.html", b"text/html; charset=utf-8"),
    "/shop/track.js": ("track.js", b"text/javascript; charset=utf-8"),
    "/shop/shop.js": ("shop.js", b"text/javascript; charset=utf-8"),
    "/shop/shop.css": ("shop.css", b"text/css; charset=utf-8"),
}
#: the shop's page: its own scripts, styles and collector only, never in a frame
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def producer_config(settings: Settings) -> dict:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": "collector",
        # Idempotence: librdkafka's retries never duplicate or reorder a partition's messages.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 200_000,
        # A message Kafka has not acknowledged by then fails; the request answered 503 long before.
        "message.timeout.ms": 60_000,
        "log_level": 2,
    }


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "collector_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.events = Counter("collector_events", "Events received, by outcome", ["outcome"], registry=r)
        self.rejected = Counter(
            "collector_rejected_events",
            "Events refused by the contract or the event types collected, by reason",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "collector_refused_requests",
            "POSTs refused whole before their events are read: origin (not allowed), bot (User-Agent)",
            ["reason"],
            registry=r,
        )
        self.accept_seconds = Histogram(
            "collector_accept_seconds",
            "From a POST's arrival to its answer (Kafka's acknowledgement included)",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )


class RateLimiter:
    """A token bucket per client: `rate` events a second on average, `burst` at once. At most
    `max_clients` buckets are kept; the least recently seen go first (a forgotten client starts
    with a full bucket again, which is no more than a new client gets)."""

    def __init__(self, rate: float, burst: int, max_clients: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, cost: float) -> float:
        """Takes `cost` tokens: 0.0 if allowed, else the seconds until they would be there."""
        now = self.clock()
        tokens, last = self.buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (min(cost, self.burst) - tokens) / self.rate
        self.buckets[client] = (tokens, now)
        if len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return wait


@dataclass
class Pending:
    """One request's messages awaiting Kafka's acknowledgements (counted on the poll thread)."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future
    left: int
    errors: list[str] = field(default_factory=list)

    def delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.errors.append(str(err))
        self.left -= 1
        if self.left == 0:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Reply(Exception):
    """Ends a request early with this status and JSON body."""

    def __init__(self, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.headers = status, error, headers or []


class Collector:
    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = Metrics()
        self.limiter = RateLimiter(
            settings.collector_client_events_per_second, settings.collector_client_burst, settings.collector_max_clients
        )
        origins = [o.strip() for o in settings.collector_cors_origins.split(",") if o.strip()]
        self.any_origin = "*" in origins
        self.origins = {o.encode() for o in origins if o != "*"}
        self.event_types = frozenset(t.strip() for t in settings.collector_event_types.split(",") if t.strip())
        self.crawlers = CrawlerDetect()
        self.metrics_server = MetricsServer(self.metrics.registry, self.healthy)
        self.kafka_ok_at = float("-inf")
        self.kafka_error = "not checked yet"
        self._running = False
        self._threads: list[threading.Thread] = []
        self.files = {path: ((STATIC / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}

    # --- lifecycle (ASGI lifespan) --------------------------------------------------------------
    def start(self) -> None:
        port = self.settings.collector_metrics_port
        if self.metrics_server.start(self.settings.metrics_host, range(port, port + 1)) is None:
            raise RuntimeError(f"COLLECTOR_METRICS_PORT {port} is taken: no /metrics and /healthz")
        if self.producer is None:
            self.producer = Producer({**producer_config(self.settings), "error_cb": self._on_kafka_error})
        self._running = True
        for target, name in ((self._poll, "kafka-poll"), (self._watch_kafka, "kafka-health")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "collecting into %s on %s; POST /v1/events; /metrics and /healthz on port %d",
            self.settings.kafka_topic,
            self.settings.kafka_bootstrap_servers,
            port,
        )

    def stop(self) -> None:
        self._running = False
        self.metrics_server.stop()
        for thread in self._threads:
            thread.join(5)
        if self.producer is not None:
            left = self.producer.flush(10)
            if left:
                log.error("%d accepted messages were not acknowledged by Kafka at shutdown", left)

    def _poll(self) -> None:
        assert self.producer is not None  # start() made it
        while self._running:
            self.producer.poll(0.05)

    def _watch_kafka(self) -> None:
        assert self.producer is not None  # start() made it
        while self._running:
            try:
                topics = self.producer.list_topics(self.settings.kafka_topic, timeout=5).topics
                meta = topics.get(self.settings.kafka_topic)
                if meta is None or meta.error is not None:
                    self.kafka_error = f"topic {self.settings.kafka_topic}: {meta.error if meta else 'missing'}"
                else:
                    self.kafka_ok_at = time.monotonic()
            except KafkaException as exc:
                self.kafka_error = f"kafka: {exc}"
            deadline = time.monotonic() + HEALTH_CHECK_SECONDS
            while self._running and time.monotonic() < deadline:
                time.sleep(0.2)

    def _on_kafka_error(self, err: KafkaError) -> None:
        self.kafka_error = f"kafka: {err.str()}"
        log.warning("kafka: %s", err.str())

    def healthy(self) -> tuple[bool, str]:
        if time.monotonic() - self.kafka_ok_at < 3 * HEALTH_CHECK_SECONDS:
            return True, f"ok: kafka answers, topic {self.settings.kafka_topic}"
        return False, self.kafka_error

    # --- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/events":
            if method == "POST":
                await self._post_events(scope, receive, send)
            elif method == "OPTIONS":
                if not self._origin_allowed(scope):
                    self.metrics.refused.labels("origin").inc()
                    await self._json(send, scope, 403, {"error": self._origin_refusal(scope)}, route="events")
                else:
                    await self._respond(send, scope, 204, b"", route="events", extra=self._preflight_headers())
            else:
                await self._json(
                    send, scope, 405, {"error": "use POST"}, route="events", extra=[(b"allow", b"POST, OPTIONS")]
                )
        elif path in ("/", "/shop") and method in ("GET", "HEAD"):
            await self._respond(send, scope, 307, b"", route="static", extra=[(b"location", b"/shop/")])
        elif path in self.files and method in ("GET", "HEAD"):
            body, ctype = self.files[path]
            extra = PAGE_HEADERS if path == "/shop/" else [(b"cache-control", b"public, max-age=300")]
            await self._respond(send, scope, 200, body, ctype, "static", extra, head=method == "HEAD")
        else:
            await self._json(send, scope, 404, {"error": "not found: POST /v1/events"}, route="other")

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _post_events(self, scope, receive, send) -> None:
        started = time.perf_counter()
        try:
            status, body, extra = await self._accept(scope, receive)
        except Reply as reply:
            status, body, extra = reply.status, {"error": reply.error}, reply.headers
        await self._json(send, scope, status, body, route="events", extra=extra)
        self.metrics.accept_seconds.observe(time.perf_counter() - started)

    async def _accept(self, scope, receive) -> tuple[int, dict, list]:
        s = self.settings
        # No event of a request from a page that may not send here: CORS alone only hides the answer.
        if not self._origin_allowed(scope):
            self.metrics.refused.labels("origin").inc()
            raise Reply(403, self._origin_refusal(scope))
        client = self._client(scope)
        wait = self.limiter.take(client, 1)
        if wait:
            raise Reply(429, f"rate limit: {s.collector_client_events_per_second:g} events/s per client", _retry(wait))
        bot = self._bot(scope)
        if bot:
            self.metrics.refused.labels("bot").inc()
            raise Reply(403, f"{bot}: events are collected from visitors' browsers, not from bots")
        body = await self._read_body(scope, receive)
        try:
            raws = _raw_array.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
            raise Reply(400, "the body must be a JSON array of event objects") from None
        if len(raws) > s.collector_max_events:
            raise Reply(
                413, f"{len(raws)} events in one request; at most {s.collector_max_events} (COLLECTOR_MAX_EVENTS)"
            )
        values = [bytes(raw) for raw in raws]
        if any(not v.startswith(b"{") for v in values):
            raise Reply(400, "the body must be a JSON array of event objects")
        if len(values) > 1:
            wait = self.limiter.take(client, len(values) - 1)
            if wait:
                raise Reply(
                    429, f"rate limit: {s.collector_client_events_per_second:g} events/s per client", _retry(wait)
                )
        latest = time.time() + s.consumer_max_future_skew
        accepted: list[tuple[bytes, bytes]] = []
        errors = []
        for i, value in enumerate(values):
            try:
                event, _ = decode_event(value, s.consumer_max_event_bytes, latest)
            except InvalidMessage as exc:
                errors.append({"index": i, "reason": exc.reason.value, "error": str(exc)})
                self.metrics.rejected.labels(exc.reason.value).inc()
                continue
            if event.event_type not in self.event_types:
                error = f"event_type {event.event_type!r} is not collected here (COLLECTOR_EVENT_TYPES)"
                errors.append({"index": i, "reason": "event_type", "error": error})
                self.metrics.rejected.labels("event_type").inc()
                continue
            accepted.append((str(event.user_id).encode(), value))
        if accepted:
            await self._produce(accepted)
        self.metrics.events.labels("accepted").inc(len(accepted))
        self.metrics.events.labels("rejected").inc(len(errors))
        return 202, {"accepted": len(accepted), "rejected": len(errors), "errors": errors}, []

    async def _produce(self, messages: list[tuple[bytes, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        pending = Pending(loop, loop.create_future(), len(messages))
        topic = self.settings.kafka_topic
        # Clients retry with the same event_ids: the consumer counts each once within its window.
        headers = [MAY_REPEAT_HEADER]
        assert self.producer is not None  # start() made it
        for key, value in messages:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=pending.delivered)
            except (BufferError, KafkaException) as exc:
                # What was queued still goes out; the client sends the batch again (counted once).
                raise Reply(503, f"kafka cannot take events now ({exc}); send them again", _retry(1)) from None
        try:
            await asyncio.wait_for(asyncio.shield(pending.done), self.settings.collector_ack_timeout_seconds)
        except TimeoutError:
            raise Reply(503, "kafka did not acknowledge the events in time; send them again", _retry(1)) from None
        if pending.errors:
            raise Reply(503, f"kafka refused events ({pending.errors[0]}); send them again", _retry(1))

    async def _read_body(self, scope, receive) -> bytes:
        limit = self.settings.collector_max_body_bytes
        too_large = Reply(413, f"body over {limit} bytes (COLLECTOR_MAX_BODY_BYTES)")
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Reply(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _client(self, scope) -> str:
        """The rate limit's key: common/client_address.py's rule, the one Superset's limits use too."""
        lines = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        peer = scope.get("client")
        address = client_address(lines, peer[0] if peer else None, self.settings.collector_trust_forwarded_for)
        return rate_limit_key(address)

    def _bot(self, scope) -> str | None:
        """Why the request's User-Agent is a bot's, or None. Browsers always send one; CrawlerDetect's
        list names crawlers, headless browsers and HTTP libraries and tools (curl, python-requests)."""
        agent = next((v for k, v in scope["headers"] if k == b"user-agent"), b"").decode("latin-1").strip()
        if not agent:
            return "no User-Agent"
        if self.crawlers.is_crawler(agent):
            return f"the User-Agent is a bot's (CrawlerDetect matched {self.crawlers.get_matches()!r})"
        return None

    def _origin(self, scope) -> bytes | None:
        return next((v for k, v in scope["headers"] if k == b"origin"), None)

    def _origin_allowed(self, scope) -> bool:
        """No Origin (no browser sent it: CORS guards browsers only), any origin with "*", a listed
        one, or the collector's own (the shop's page, same origin: its Origin names the Host asked)."""
        origin = self._origin(scope)
        if origin is None or self.any_origin or origin in self.origins:
            return True
        host = next((v for k, v in scope["headers"] if k == b"host"), None)
        try:
            return host is not None and urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") == host
        except ValueError:
            return False

    def _origin_refusal(self, scope) -> str:
        origin = (self._origin(scope) or b"").decode("latin-1")[:200]
        return f"origin {origin!r} may not send events here (COLLECTOR_CORS_ORIGINS)"

    # --- answers --------------------------------------------------------------------------------
    def _cors_headers(self, scope) -> list[tuple[bytes, bytes]]:
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is None:
            return []
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        if origin in self.origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        return []

    @staticmethod
    def _preflight_headers() -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-methods", b"POST, OPTIONS"),
            (b"access-control-allow-headers", b"content-type"),
            (b"access-control-max-age", b"86400"),
        ]

    async def _json(self, send, scope, status: int, body: dict, route: str, extra=None) -> None:
        await self._respond(send, scope, status, json.dumps(body).encode(), b"application/json", route, extra)

    async def _respond(
        self, send, scope, status, body: bytes, ctype: bytes = b"", route="other", extra=None, head=False
    ) -> None:
        headers = [(b"content-length", str(len(body)).encode()), (b"x-content-type-options", b"nosniff")]
        if ctype:
            headers.append((b"content-type", ctype))
        headers += self._cors_headers(scope) + (extra or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})
        self.metrics.requests.labels(route, str(status)).inc()


def _retry(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, int(seconds + 0.999))).encode())]
