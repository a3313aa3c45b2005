"""The HTTP collector (collector/) on a real Kafka broker and, where counting matters, the real
consumer and Postgres: contract and event-type errors per event, the status of each kind of bad
request, bots and foreign origins refused, the per-client rate limit (IPv6 per /64), /metrics and
/healthz on their own port only, and that every accepted event is in Kafka when the 202 arrives."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.pipeline_harness import ARTIFACTS, PARTITIONS, Pipeline
from tests.support.ephemeral import ROOT, free_port
from tests.support.events import BROWSER_USER_AGENT
from tests.support.events import event as build_event


def event(user_id: int = 7, **fields) -> dict:
    return build_event(user_id, **fields)


class Collector:
    """`python -m collector` on free ports (public, metrics), with the pipeline's topic and these
    settings; its requests come from a browser unless they say otherwise."""

    def __init__(self, pipeline: Pipeline, wait_healthy: bool = True, **env: str) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.pipeline = pipeline
        log = ARTIFACTS / "collector" / f"{pipeline.topic}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector"],
            cwd=ROOT,
            env={
                **pipeline.env,
                "COLLECTOR_PORT": str(self.port),
                "COLLECTOR_METRICS_PORT": str(self.metrics_port),
                **env,
            },
            stdout=open(log, "wb"),  # noqa: SIM115 - lives with the process
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.health()[0] == 200 or not wait_healthy:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.2)
        raise AssertionError(f"the collector never turned healthy:\n{log.read_text()}")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, lines=(), port=None
    ):
        """`headers` over a browser's User-Agent (None drops a header); `lines`: (name, value) pairs
        sent as header lines of their own, a name repeated as often as it comes."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=30)
        try:
            conn.putrequest(method, path)
            given = {"User-Agent": BROWSER_USER_AGENT, **(headers or {})}
            if body is not None:
                given.setdefault("Content-Length", str(len(body)))
            for name, value in [*((n, v) for n, v in given.items() if v is not None), *lines]:
                conn.putheader(name, value)
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def post(self, events, headers: dict | None = None, lines=()):
        body = events if isinstance(events, bytes) else json.dumps(events).encode()
        status, head, data = self.request(
            "POST", "/v1/events", body, {"Content-Type": "application/json", **(headers or {})}, lines
        )
        return status, head, json.loads(data) if data else None

    def health(self) -> tuple[int, bytes]:
        status, _, body = self.request("GET", "/healthz", port=self.metrics_port)
        return status, body

    def metrics(self) -> str:
        return self.request("GET", "/metrics", port=self.metrics_port)[2].decode()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def test_without_a_trusted_proxy_a_forwarded_address_does_not_escape_the_rate_limit(pipeline):
    # one token per 100 s: no refill between the requests, however slow the machine
    c = Collector(pipeline, COLLECTOR_CLIENT_EVENTS_PER_SECOND="0.01", COLLECTOR_CLIENT_BURST="3")
    try:
        assert c.post([event() for _ in range(3)])[0] == 202
        for spoofed in ("198.51.100.7", "203.0.113.8"):
            assert c.post([event()], {"X-Forwarded-For": spoofed})[0] == 429
    finally:
        c.close()


@pytest.fixture
def collector(pipeline):
    c = Collector(pipeline)
    yield c
    c.close()


def in_kafka(pipeline: Pipeline) -> list[tuple[bytes, dict]]:
    """Every message now in the pipeline's topic: (key, value)."""
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"read_{uuid.uuid4()}", "log_level": 0})
    try:
        parts = []
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(pipeline.topic, p), timeout=10)
            if high > low:
                parts.append((p, low, high))
        consumer.assign([TopicPartition(pipeline.topic, p, low) for p, low, _ in parts])
        want = sum(high - low for _, low, high in parts)
        got: list[tuple[bytes, dict]] = []
        deadline = time.monotonic() + 30
        while len(got) < want and time.monotonic() < deadline:
            for m in consumer.consume(1000, 1):
                if m.error() is None:
                    got.append((m.key(), json.loads(m.value())))
        return got
    finally:
        consumer.close()


def test_accepted_events_are_in_kafka_keyed_by_user_when_the_202_arrives(collector, pipeline):
    sent = [event(user_id=u) for u in (1, 2, 3, 42)]
    status, _, body = collector.post(sent)
    assert (status, body) == (202, {"accepted": 4, "rejected": 0, "errors": []})
    got = in_kafka(pipeline)  # read at once: the 202 came after Kafka's acknowledgement
    assert sorted((k, v["event_id"]) for k, v in got) == sorted(
        (str(e["user_id"]).encode(), e["event_id"]) for e in sent
    )


def test_each_rejected_event_gets_its_reason_and_the_others_go_through(collector, pipeline):
    sent = [
        event(),
        event(event_type="view\n"),  # the contract's full-match patterns
        event(occurred_at="1999-12-31T23:59:59Z"),  # before the floor
        event(occurred_at=(dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()),  # the future
        event(amount=5.0),  # amount on a view
        {"schema_version": 1},
        event(user_id=0),
        event(event_type="purchase", amount=19.99),
    ]
    status, _, body = collector.post(sent)
    assert status == 202 and (body["accepted"], body["rejected"]) == (2, 6), body
    reasons = {e["index"]: e["reason"] for e in body["errors"]}
    assert reasons == {1: "contract", 2: "event_time", 3: "event_time", 4: "contract", 5: "contract", 6: "contract"}
    assert all(e["error"] for e in body["errors"])
    assert sorted(v["event_id"] for _, v in in_kafka(pipeline)) == sorted([sent[0]["event_id"], sent[7]["event_id"]])


def test_product_analytics_fields_and_identify_pass_through_to_kafka_unchanged(collector, pipeline):
    """identify is collected by default (the tracker's rtAnalytics.identify); the new fields go to Kafka
    as sent, and the contract's rules on them refuse an event each, as the consumer would."""
    landing = event(
        referrer="https://www.google.com/search?q=coffee",
        utm_source="google",
        utm_medium="cpc",
        utm_campaign="spring sale \u2615",
    )
    signed_in = event(event_type="identify", identified_user_id=1234)
    sent = [
        landing,
        signed_in,
        event(event_type="identify"),  # identify without the known user
        event(identified_user_id=1234),  # identified_user_id on a view
        event(utm_source="google\n"),
        event(referrer="javascript:alert(1)"),
    ]
    status, _, body = collector.post(sent)
    assert status == 202 and (body["accepted"], body["rejected"]) == (2, 4), body
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [(i, "contract") for i in (2, 3, 4, 5)]
    assert sorted((v for _, v in in_kafka(pipeline)), key=lambda v: v["event_type"]) == [signed_in, landing]


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{}", b'{"events": []}', b"[1, 2]", b'["a"]', b"[[]]", b"[null]", b"[" * 100_000, b"\xff\xfe"],
)
def test_a_body_that_is_not_an_array_of_objects_is_400(collector, body):
    status, _, answer = collector.post(body)
    assert status == 400 and "array of event objects" in answer["error"], (status, answer)


def test_over_the_size_or_count_limit_is_413_and_nothing_is_sent(pipeline):
    c = Collector(pipeline, COLLECTOR_MAX_BODY_BYTES="4096", COLLECTOR_MAX_EVENTS="5", COLLECTOR_CLIENT_BURST="100")
    try:
        status, _, answer = c.post([event(page="x" * 2000), event(page="y" * 2000), event()])
        assert status == 413 and "COLLECTOR_MAX_BODY_BYTES" in answer["error"]
        status, _, answer = c.post([event() for _ in range(6)])
        assert status == 413 and "COLLECTOR_MAX_EVENTS" in answer["error"]
        # a Content-Length over the limit is refused before the body is read
        status, _, _ = c.request("POST", "/v1/events", b"[]", {"Content-Length": "999999999"})
        assert status == 413
        assert c.post([event() for _ in range(5)])[0] == 202
    finally:
        c.close()
    assert len(in_kafka(pipeline)) == 5


def test_a_client_over_its_rate_gets_429_and_others_do_not(pipeline):
    c = Collector(
        pipeline,
        # one token per 5 s: none comes back between two requests even on a loaded machine
        COLLECTOR_CLIENT_EVENTS_PER_SECOND="0.2",
        COLLECTOR_CLIENT_BURST="10",
        COLLECTOR_TRUST_FORWARDED_FOR="true",
    )
    try:
        alice = {"X-Forwarded-For": "198.51.100.1"}
        assert c.post([event() for _ in range(10)], alice)[0] == 202  # the whole burst
        status, head, answer = c.post([event()], alice)
        assert status == 429 and "rate limit" in answer["error"] and int(head["retry-after"]) >= 1
        # one hop: only the address the proxy appended counts, not what the client claims before it
        assert c.post([event()], {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"})[0] == 202
        time.sleep(10.5)  # two tokens back
        assert c.post([event() for _ in range(2)], alice)[0] == 202
        assert 'collector_requests_total{route="events",status="429"} 1.0' in c.metrics()
    finally:
        c.close()


def test_cors_answers_the_allowed_origins_only(pipeline):
    c = Collector(pipeline, COLLECTOR_CORS_ORIGINS="https://shop.example, https://demo.example")
    try:
        status, head, _ = c.request(
            "OPTIONS", "/v1/events", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
        )
        assert status == 204 and head["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in head["access-control-allow-methods"]
        # sendBeacon posts text/plain (no preflight): accepted the same
        status, head, _ = c.request(
            "POST",
            "/v1/events",
            json.dumps([event()]).encode(),
            {"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://demo.example"},
        )
        assert status == 202 and head["access-control-allow-origin"] == "https://demo.example"
    finally:
        c.close()


def test_an_origin_not_allowed_gets_403_and_no_event_goes_simple_requests_too(pipeline):
    """CORS alone only hides the answer from the page; the server refuses the events themselves."""
    c = Collector(pipeline, COLLECTOR_CORS_ORIGINS="https://shop.example")
    try:
        evil = {"Origin": "https://evil.example"}
        status, head, answer = c.post([event()], evil)
        assert (
            status == 403 and "COLLECTOR_CORS_ORIGINS" in answer["error"] and "access-control-allow-origin" not in head
        )
        for origin in ("https://evil.example", "null", "https://shop.example.evil.example", "https://shop.example:444"):
            beacon = {"Content-Type": "text/plain;charset=UTF-8", "Origin": origin}
            assert c.request("POST", "/v1/events", json.dumps([event()]).encode(), beacon)[0] == 403, origin
        preflight = {**evil, "Access-Control-Request-Method": "POST"}
        assert c.request("OPTIONS", "/v1/events", headers=preflight)[0] == 403
        assert 'collector_refused_requests_total{reason="origin"} 6.0' in c.metrics()
        # without Origin: no browser (a server, curl), which CORS does not govern
        assert c.post([event()])[0] == 202
        # the shop's own page (same origin: its Origin names the Host it asked), not listed
        assert c.post([event()], {"Origin": f"http://127.0.0.1:{c.port}"})[0] == 202
    finally:
        c.close()
    assert len(in_kafka(pipeline)) == 2


def test_any_origin_with_a_star(collector):
    status, head, _ = collector.post([event()], {"Origin": "https://anywhere.example"})
    assert status == 202 and head["access-control-allow-origin"] == "*"


#: User-Agents of crawlers, headless browsers and HTTP tools, as they send them
BOTS = {
    "Googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Googlebot smartphone": "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "GPTBot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "HeadlessChrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36",
    "curl": "curl/8.5.0",
    "python-requests": "python-requests/2.32.3",
    "Python-urllib": "Python-urllib/3.11",
    "empty": "",
}
BROWSERS = [
    BROWSER_USER_AGENT,
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 "
    "Edg/131.0.0.0",
]


def test_bots_are_refused_by_user_agent_and_counted(collector, pipeline):
    refused = {}
    for name, agent in [*BOTS.items(), ("no User-Agent", None)]:
        status, _, answer = collector.post([event()], {"User-Agent": agent})
        refused[name] = (status, "not from bots" in answer["error"])
    assert refused == {name: (403, True) for name in [*BOTS, "no User-Agent"]}
    assert all(collector.post([event()], {"User-Agent": agent})[0] == 202 for agent in BROWSERS)
    assert f'collector_refused_requests_total{{reason="bot"}} {len(BOTS) + 1}.0' in collector.metrics()
    assert len(in_kafka(pipeline)) == len(BROWSERS)


def test_event_types_not_collected_are_refused_per_event_and_the_others_go(collector, pipeline):
    sent = [event(), event(event_type="signup"), event(event_type="click"), event(event_type="x" * 50)]
    sent.append(event(event_type="purchase", amount=5.0))
    status, _, body = collector.post(sent)
    assert status == 202 and (body["accepted"], body["rejected"]) == (3, 2), body
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [(1, "event_type"), (3, "event_type")]
    assert "COLLECTOR_EVENT_TYPES" in body["errors"][0]["error"]
    assert 'collector_rejected_events_total{reason="event_type"} 2.0' in collector.metrics()
    assert sorted(v["event_type"] for _, v in in_kafka(pipeline)) == ["click", "purchase", "view"]


def test_the_event_types_collected_are_a_setting(pipeline):
    c = Collector(pipeline, COLLECTOR_EVENT_TYPES="view, signup")
    try:
        body = c.post([event(event_type="signup"), event(event_type="click")])[2]
        assert (body["accepted"], [e["reason"] for e in body["errors"]]) == (1, ["event_type"])
    finally:
        c.close()


def test_the_client_is_the_last_forwarded_address_whatever_the_header_lines(pipeline):
    """The lines joined in order, the last entry taken (common/client_address.py, Superset's rule
    too); IPv6 counts per /64; an entry that is no address counts as the peer."""
    c = Collector(
        pipeline,
        COLLECTOR_CLIENT_EVENTS_PER_SECOND="0.01",
        COLLECTOR_CLIENT_BURST="2",
        COLLECTOR_TRUST_FORWARDED_FOR="true",
    )
    try:

        def status(*lines: str) -> int:
            return c.post([event()], lines=[("X-Forwarded-For", line) for line in lines])[0]

        # whatever the client claims in earlier lines, its address is the one the proxy appended last
        assert [status("203.0.113.1", "198.51.100.20"), status("203.0.113.2", "198.51.100.20")] == [202, 202]
        assert status("203.0.113.3, 203.0.113.4", "198.51.100.20") == 429
        assert status("198.51.100.20", "203.0.113.5") == 202  # another client
        # two addresses of one /64 share a bucket; the next /64 has its own
        assert [status("2001:db8:5:6::1"), status("2001:db8:5:6:ffff::2")] == [202, 202]
        assert status("2001:db8:5:6::3") == 429
        assert status("2001:db8:5:7::1") == 202
        # no address at the end: the peer's bucket (127.0.0.1), which a request without the header uses
        assert [status("198.51.100.30, garbage"), c.post([event()])[0], status("198.51.100.31,")] == [202, 202, 429]
    finally:
        c.close()


def test_metrics_and_health_are_on_their_own_port_only(collector):
    """The public port is what the shop's tunnel publishes: nothing there but events and the shop."""
    for path in ("/metrics", "/healthz"):
        assert collector.request("GET", path)[0] == 404, path
    assert collector.request("GET", "/shop/")[0] == 200
    assert collector.request("GET", "/v1/events", port=collector.metrics_port)[0] == 404


def test_health_and_metrics_beside_the_other_services(collector):
    status, body = collector.health()
    assert status == 200 and b"kafka answers" in body
    collector.post([event(), event(event_type="bad type")])
    metrics = collector.metrics()
    assert 'collector_events_total{outcome="accepted"} 1.0' in metrics
    assert 'collector_rejected_events_total{reason="contract"} 1.0' in metrics
    assert "collector_accept_seconds_bucket" in metrics
    assert collector.request("GET", "/nowhere")[0] == 404
    assert collector.request("GET", "/v1/events")[0] == 405


def test_without_kafka_it_answers_503_never_202(pipeline):
    c = Collector(
        pipeline,
        wait_healthy=False,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        COLLECTOR_ACK_TIMEOUT_SECONDS="2",
    )
    try:
        status, head, answer = c.post([event()])
        assert status == 503 and "send them again" in answer["error"] and head["retry-after"] == "1", answer
        assert c.health()[0] == 503
    finally:
        c.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.dictionaries(
        st.sampled_from(
            ["schema_version", "event_id", "event_type", "user_id", "session_id", "occurred_at", "amount", "page", "x"]
        ),
        JSON_VALUES,
        max_size=4,
    )
)
def test_any_object_is_accepted_or_rejected_with_a_reason_never_an_error(collector, fields):
    """Hypothesis at the contract's edge: valid events with any fields replaced by any JSON value."""
    status, _, body = collector.post([{**event(), **fields}])
    assert status == 202 and body["accepted"] + body["rejected"] == 1, (status, body)
    if body["rejected"]:
        reason = body["errors"][0]["reason"]
        assert reason in {"contract", "event_time", "malformed", "event_type"} and body["errors"][0]["error"]


def consumed(pipeline: Pipeline, messages: int) -> None:
    pipeline.sent.messages = messages
    pipeline.wait_until_consumed(timeout=60)


def views(pipeline: Pipeline) -> dict[int, int]:
    return dict(pipeline.query("SELECT user_id, event_count FROM streaming.user_events WHERE event_type = 'view'"))


def test_a_clients_retries_are_counted_once(collector, pipeline):
    """Through the collector, Kafka, the real consumer and Postgres: the same events sent again (in
    the same request, then in another, as a client that got no 202 would) count once."""
    pipeline.start_consumer()
    sent = [event(user_id=u) for u in (5, 6, 7)]
    assert collector.post(sent + sent[:1])[2]["accepted"] == 4
    consumed(pipeline, 4)
    assert collector.post(sent)[2]["accepted"] == 3
    consumed(pipeline, 7)
    assert views(pipeline) == {5: 1, 6: 1, 7: 1}
    [(ids,)] = pipeline.query("SELECT count(*) FROM streaming.event_ids")
    assert ids == 3
    # counted once the batch settles, a moment after its offsets are stored
    deadline = time.monotonic() + 10
    while "stream_consumer_duplicate_events_total 4.0" not in (metrics := pipeline.consumer_metrics()):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.2)


def test_after_the_window_a_copy_counts_again_and_old_ids_are_forgotten(pipeline):
    """The window's generations (streaming.sql): an id is remembered for at least one window (across
    one rotation) and forgotten at the second rotation, when a copy counts again."""
    from stream_consumer.store import rotate_event_ids

    pipeline.env["CONSUMER_DEDUP_WINDOW_SECONDS"] = "2"
    c = Collector(pipeline)
    try:
        pipeline.start_consumer()
        once = [event(user_id=8)]
        c.post(once)
        consumed(pipeline, 1)
        time.sleep(2.5)
        assert rotate_event_ids(pipeline.dsn, 2) == 0  # the slot it empties held nothing
        c.post(once)
        consumed(pipeline, 2)
        assert views(pipeline) == {8: 1}  # remembered in the generation before the current one
        fresh = [event(user_id=9)]
        c.post(fresh)
        consumed(pipeline, 3)
        time.sleep(2.5)
        assert rotate_event_ids(pipeline.dsn, 2) == 1  # bounded storage: user 8's id goes
        assert rotate_event_ids(pipeline.dsn, 2) == 0  # not due again before another window
        c.post(once)
        consumed(pipeline, 4)
        assert views(pipeline) == {8: 2, 9: 1}
        left = pipeline.query("SELECT user_id, event_id::text FROM streaming.event_ids ORDER BY user_id")
        assert left == [(8, once[0]["event_id"]), (9, fresh[0]["event_id"])]
    finally:
        c.close()


def test_only_the_events_that_may_repeat_have_their_ids_remembered(pipeline):
    """Through real Kafka headers: events with MAY_REPEAT_HEADER (the collector's) count once per
    id and their ids are recorded; events without it (an idempotent producer that mints each id
    once, as kafka_producer) are counted as they come and cost the window nothing."""
    from confluent_kafka import Producer

    from common.contract import MAY_REPEAT_HEADER
    from kafka_producer.producer import produce_one

    pipeline.start_consumer()
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    plain, may_repeat = event(user_id=11), event(user_id=12)
    for e, headers in ((plain, None), (may_repeat, [MAY_REPEAT_HEADER])):
        for _ in range(2):
            produce_one(producer, pipeline.topic, str(e["user_id"]).encode(), json.dumps(e).encode(), headers)
    assert producer.flush(30) == 0
    consumed(pipeline, 4)
    assert views(pipeline) == {11: 2, 12: 1}
    assert pipeline.query("SELECT event_id::text FROM streaming.event_ids") == [(may_repeat["event_id"],)]
