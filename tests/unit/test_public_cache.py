"""superset/public_cache.py, the replay of anonymous chart-data answers, as WSGI middleware around a
stand-in app that counts what reaches it and compresses like flask-compress (tests/e2e/
test_public_replay.py and test_public_view.py run it in Superset)."""

from __future__ import annotations

import gzip
import importlib.util
import io
import sys
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_compose import ROOT

spec = importlib.util.spec_from_file_location("public_cache", ROOT / "superset" / "public_cache.py")
public_cache = importlib.util.module_from_spec(spec)
sys.modules.setdefault("public_cache", public_cache)  # dataclasses look their module up
spec.loader.exec_module(public_cache)

BODY = b'{"queries": [{"metrics": ["events"]}]}'


class App:
    """Answers each request with its own number (padded to `size` bytes); gzips it when the request
    offers gzip, as flask-compress would; `status` and `gate` shape the answer."""

    def __init__(self, status: str = "200 OK", size: int = 0) -> None:
        self.calls, self.status, self.size = 0, status, size
        self.gate: threading.Event | None = None
        #: with a gate: only bodies containing this wait for it
        self.slow: bytes | None = None
        #: gzip whatever the request offered (a misbehaving app)
        self.always_gzip = False
        self.offered: list[str | None] = []

    def __call__(self, environ, start_response):
        self.calls += 1
        number = self.calls
        self.offered.append(environ.get("HTTP_ACCEPT_ENCODING"))
        asked = environ["wsgi.input"].read()
        if self.gate is not None and (self.slow is None or self.slow in asked):
            self.gate.wait(10)
        body = str(number).encode().ljust(self.size, b" ")
        headers = [("Content-Type", "application/json"), ("Set-Cookie", f"session={number}")]
        if self.always_gzip or "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body)
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        start_response(self.status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


def request(cache, body: bytes = BODY, **extra) -> tuple[str, dict, bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/v1/chart/data",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(body),
        **extra,
    }
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)

    answer = b"".join(cache(environ, start_response))
    return seen["status"], seen["headers"], answer


def cache_for(app: App, ttl: float = 60, logged_in: bool = False, saved: bool | set = True):
    """The middleware around `app`; `saved`: whether bodies are the dashboard's saved requests
    (all, none, or the bodies in a set), each its own saved request. The address is
    X-Forwarded-For as is."""

    def is_saved(body: bytes) -> str | None:
        return body.decode() if (body in saved if isinstance(saved, set) else saved) else None

    return public_cache.PublicChartCache(
        app, ttl, lambda environ: logged_in, is_saved, lambda environ: environ.get("HTTP_X_FORWARDED_FOR", "")
    )


def test_identical_anonymous_requests_reach_superset_once_per_period():
    app = App()
    cache = cache_for(app)
    answers = {request(cache)[2] for _ in range(20)}
    assert (answers, app.calls) == ({b"1"}, 1)


def test_different_requests_get_their_own_answers():
    app = App()
    cache = cache_for(app)
    assert request(cache, BODY)[2] != request(cache, BODY.replace(b"events", b"users"))[2]


@pytest.mark.parametrize("status", ["429 TOO MANY REQUESTS", "500 INTERNAL SERVER ERROR", "503 SERVICE UNAVAILABLE"])
def test_a_per_address_or_server_failure_answer_is_never_replayed(status):
    app = App(status)
    cache = cache_for(app)
    request(cache), request(cache)
    assert app.calls == 2


@pytest.mark.parametrize("status", ["403 FORBIDDEN", "400 BAD REQUEST"], ids=["refusal", "failed-query"])
def test_the_public_views_refusal_and_a_failed_query_are_replayed_like_an_answer(status):
    """A client repeating a forced or ad-hoc request gets the same 403 without reaching Superset;
    viewers of a chart whose source is down get its 400 without each asking Trino."""
    app = App(status)
    cache = cache_for(app)
    statuses = {request(cache)[0] for _ in range(10)}
    assert (statuses, app.calls) == ({status}, 1)


def test_beyond_the_requests_asking_and_waiting_their_turn_a_new_one_is_told_busy():
    app = App()
    app.gate = threading.Event()
    cache = cache_for(app, saved=True)
    queued = public_cache.MAX_ASKING + public_cache.MAX_WAITING
    threads = [
        threading.Thread(target=request, args=(cache, BODY.replace(b"events", f"m{i}".encode()))) for i in range(queued)
    ]
    for thread in threads:
        thread.start()
    while app.calls < public_cache.MAX_ASKING or cache.waiting < public_cache.MAX_WAITING:
        time.sleep(0.01)
    status = request(cache, BODY.replace(b"events", b"another"))[0]
    app.gate.set()
    for thread in threads:
        thread.join()
    assert (status, app.calls) == ("429 TOO MANY REQUESTS", queued)


def test_a_request_waiting_its_turn_gets_its_answer():
    app = App()
    app.gate = threading.Event()
    cache = cache_for(app)
    first = threading.Thread(target=request, args=(cache, BODY.replace(b"events", b"first")))
    first.start()
    while app.calls < 1:
        time.sleep(0.01)
    threading.Timer(0.2, app.gate.set).start()
    assert request(cache)[0] == "200 OK"


def test_a_visitors_cookie_is_never_replayed_to_another():
    cache = cache_for(App())
    request(cache)
    assert "Set-Cookie" not in request(cache)[1]


def test_logged_in_requests_pass_straight_through():
    app = App()
    cache = cache_for(app, logged_in=True)
    request(cache), request(cache)
    assert app.calls == 2


@pytest.mark.parametrize(
    "marker",
    [{"HTTP_AUTHORIZATION": "Bearer junk"}, {"HTTP_X_GUESTTOKEN": "junk"}, {"HTTP_COOKIE": "remember_token=x"}],
    ids=["authorization", "guest-token", "remember-cookie"],
)
def test_a_token_or_cookie_that_did_not_verify_is_replayed_like_anyone(marker):
    """Only `is_logged_in` (security.py's verification) lets a request skip the replay."""
    app = App()
    cache = cache_for(app)
    request(cache, **marker), request(cache, **marker)
    assert app.calls == 1


def test_zero_seconds_turns_the_replay_off():
    app = App()
    cache = cache_for(app, ttl=0)
    request(cache), request(cache)
    assert app.calls == 2


def test_an_expired_answer_is_still_the_answer_while_a_refresh_runs_beside():
    app = App()
    cache = cache_for(app, ttl=0.05)
    request(cache)
    time.sleep(0.1)
    app.gate = threading.Event()  # the refresh hangs until released: no request may wait for it
    answers = [request(cache)[2] for _ in range(3)]
    while app.calls < 2:
        time.sleep(0.01)
    app.gate.set()
    assert (answers, app.calls) == ([b"1"] * 3, 2)


def test_a_refreshed_answer_replaces_the_expired_one():
    app = App()
    cache = cache_for(app, ttl=0.05)
    request(cache)
    time.sleep(0.1)
    request(cache)  # stale "1"; the refresh asks for "2"
    while app.calls < 2:
        time.sleep(0.01)
    time.sleep(0.05)
    assert request(cache)[2] == b"2"


def test_concurrent_first_requests_wait_for_the_one_in_flight():
    app = App()
    app.gate = threading.Event()
    cache = cache_for(app)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(request(cache)[2])) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    app.gate.set()
    for thread in threads:
        thread.join()
    assert (set(answers), app.calls) == ({b"1"}, 1)


@pytest.mark.parametrize("status", ["400 BAD REQUEST", "403 FORBIDDEN"])
def test_an_expired_failure_or_refusal_is_asked_again_not_replayed_stale(status):
    app = App(status=status)
    cache = cache_for(app, ttl=0.05)
    first = request(cache)
    app.status = "200 OK"  # the chart's source recovered
    time.sleep(0.1)
    again = request(cache)
    assert (first[0], first[2], again[0], again[2], again[1]["X-Public-Replay"]) == (
        status,
        b"1",
        "200 OK",
        b"2",
        "miss",
    )


def test_an_answer_older_than_the_staleness_bound_is_dropped(monkeypatch):
    app = App()
    cache = cache_for(app, ttl=0.01)
    request(cache)
    monkeypatch.setattr(public_cache, "MAX_STALE", 0.0)
    time.sleep(0.05)
    assert request(cache)[2] == b"2"


def unique(i: int | str) -> bytes:
    return BODY.replace(b"events", f"events-{i}".encode())


def wait_for(condition) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- encodings: negotiated per request ----------------------------------------------------------

DECODERS = {"gzip": gzip.decompress}
try:
    import brotli

    DECODERS["br"] = brotli.decompress
except ImportError:
    pass
try:
    from compression import zstd  # Python >= 3.14
except ImportError:
    try:
        from backports import zstd
    except ImportError:
        zstd = None
if zstd is not None:
    DECODERS["zstd"] = zstd.decompress


def decoded(headers: dict, body: bytes) -> bytes:
    encoding = headers.get("Content-Encoding")
    return DECODERS[encoding](body) if encoding else body


def test_an_answer_first_asked_compressed_reaches_a_client_offering_no_encoding_as_identity():
    app = App(size=2000)
    cache = cache_for(app)
    first = request(cache, HTTP_ACCEPT_ENCODING="gzip")
    second = request(cache)
    assert (decoded(first[1], first[2]), "Content-Encoding" in second[1], second[2], app.offered) == (
        b"1".ljust(2000),
        False,
        b"1".ljust(2000),
        [None],  # Superset was asked without Accept-Encoding: it answered identity
    )


ACCEPT_PART = st.tuples(
    st.sampled_from(["zstd", "br", "gzip", "deflate", "identity", "*", "x-unknown", "GZIP", ""]),
    st.sampled_from(["", ";q=0", ";q=0.0", ";q=0.5", ";q=1", ";q=junk", "; q=0.2"]),
).map("".join)


def acceptable(accept: str) -> dict[str, float]:
    """What a header offers, read independently of the middleware: coding -> q."""
    offered = {}
    for part in accept.lower().split(","):
        name, _, params = part.partition(";")
        q = 1.0
        if "q=" in params:
            try:
                q = float(params.split("q=")[1])
            except ValueError:
                q = 0.0
        offered[name.strip()] = q
    return offered


@given(st.lists(ACCEPT_PART, max_size=4).map(", ".join), st.lists(ACCEPT_PART, max_size=4).map(", ".join))
def test_no_client_gets_an_encoding_it_did_not_offer(first, second):
    """Whatever the first client offered (its answer is the one kept), the next one gets an
    encoding it offered with q > 0 ('*' standing for the others), or identity, and can read it."""
    app = App(size=2000)
    cache = cache_for(app)
    request(cache, HTTP_ACCEPT_ENCODING=first)
    _, headers, body = request(cache, HTTP_ACCEPT_ENCODING=second)
    encoding = headers.get("Content-Encoding")
    offered = acceptable(second)
    assert encoding is None or offered.get(encoding, offered.get("*", 0.0)) > 0
    assert (decoded(headers, body), headers["Vary"]) == (b"1".ljust(2000), "Accept-Encoding")


def test_a_coding_refused_with_q_0_is_not_sent():
    cache = cache_for(App(size=2000))
    request(cache, HTTP_ACCEPT_ENCODING="gzip")
    assert "Content-Encoding" not in request(cache, HTTP_ACCEPT_ENCODING="gzip;q=0, identity")[1]


def test_each_client_gets_the_best_encoding_it_offered():
    cache = cache_for(App(size=2000))
    request(cache)
    assert request(cache, HTTP_ACCEPT_ENCODING="deflate, gzip;q=0.5")[1]["Content-Encoding"] == "gzip"


def test_small_answers_are_sent_as_they_are():
    cache = cache_for(App(size=10))
    assert "Content-Encoding" not in request(cache, HTTP_ACCEPT_ENCODING="gzip")[1]


def test_an_answer_the_app_encoded_anyway_is_never_kept():
    app = App(size=2000)
    app.always_gzip = True
    cache = cache_for(app)
    request(cache), request(cache)
    assert app.calls == 2


# --- shares: ever-new bodies evict each other, not the dashboard's saved answers -----------------


def test_ever_new_bodies_evict_each_other_and_not_the_saved_answers(monkeypatch):
    monkeypatch.setattr(public_cache, "OTHER_BYTES", 20_000)
    monkeypatch.setattr(public_cache, "SAVED_BYTES", 20_000)
    monkeypatch.setattr(public_cache, "OTHER_PER_MINUTE", 10_000)
    monkeypatch.setattr(public_cache, "OTHER_BURST", 1_000)
    app = App(size=4000)
    cache = cache_for(app, saved={BODY})
    request(cache)
    for i in range(100):  # 400 kB of ever-new answers, 20 times the other share
        assert request(cache, unique(i), HTTP_X_FORWARDED_FOR=f"192.0.2.{i % 250}")[0] == "200 OK"
    calls = app.calls
    assert (request(cache)[2].strip(), app.calls) == (b"1", calls)


# --- bounds: other requests per address, at once and per minute ---------------------------------


def start(cache, body: bytes, address: str) -> threading.Thread:
    thread = threading.Thread(target=request, args=(cache, body), kwargs={"HTTP_X_FORWARDED_FOR": address})
    thread.start()
    return thread


def test_one_address_gets_no_more_other_turns_than_its_share(monkeypatch):
    monkeypatch.setattr(public_cache, "OTHER_WAITING", 5)
    app = App()
    app.gate = threading.Event()
    cache = cache_for(app, saved=False)
    threads = [start(cache, unique(i), "192.0.2.1") for i in range(public_cache.OTHER_PER_ADDRESS)]
    wait_for(lambda: app.calls == 1 and cache.others.waiting_now == public_cache.OTHER_PER_ADDRESS - 1)
    same_address = request(cache, unique("more"), HTTP_X_FORWARDED_FOR="192.0.2.1")  # would wait if allowed
    threads.append(start(cache, unique("another"), "192.0.2.2"))
    wait_for(lambda: cache.others.waiting_now == public_cache.OTHER_PER_ADDRESS)
    app.gate.set()
    for thread in threads:
        thread.join()
    assert (same_address[0], same_address[1]["X-Public-Replay"], app.calls) == (
        "429 TOO MANY REQUESTS",
        "busy",
        public_cache.OTHER_PER_ADDRESS + 1,
    )


def test_beyond_the_other_requests_asking_and_waiting_a_new_one_is_told_busy_at_once():
    app = App()
    app.gate = threading.Event()
    cache = cache_for(app, saved=False)
    held = public_cache.OTHER_ASKING + public_cache.OTHER_WAITING
    threads = [start(cache, unique(i), f"192.0.2.{i}") for i in range(held)]
    wait_for(lambda: app.calls == public_cache.OTHER_ASKING and cache.others.waiting_now == public_cache.OTHER_WAITING)
    status = request(cache, unique("new"), HTTP_X_FORWARDED_FOR="192.0.2.200")[0]  # would wait if it could
    app.gate.set()
    for thread in threads:
        thread.join()
    assert (status, app.calls) == ("429 TOO MANY REQUESTS", held)


def test_other_requests_beyond_the_per_minute_budget_are_told_busy_while_saved_ones_are_answered():
    app = App()
    cache = cache_for(app, saved={BODY})
    statuses = [
        request(cache, unique(i), HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")[0] for i in range(public_cache.OTHER_BURST + 1)
    ]
    assert (statuses[-1], request(cache)[0], app.calls) == (
        "429 TOO MANY REQUESTS",
        "200 OK",
        public_cache.OTHER_BURST + 1,
    )


def test_refused_other_requests_use_none_of_the_per_minute_budget():
    """The public view's refusal costs no query: only the bounds at once apply to it."""
    app = App("403 FORBIDDEN")
    cache = cache_for(app, saved=False)
    statuses = {request(cache, unique(i))[0] for i in range(3 * public_cache.OTHER_BURST)}
    assert (statuses, app.calls) == ({"403 FORBIDDEN"}, 3 * public_cache.OTHER_BURST)


def test_saved_requests_have_their_own_turns_while_other_turns_are_taken():
    app = App()
    app.gate, app.slow = threading.Event(), b"slow"
    cache = cache_for(app, saved={BODY})
    others = [
        start(cache, unique(f"slow{i}"), f"192.0.2.{i}")
        for i in range(public_cache.OTHER_ASKING + public_cache.OTHER_WAITING)
    ]
    wait_for(lambda: app.calls == 1 and cache.others.waiting_now == public_cache.OTHER_WAITING)
    saved = request(cache, HTTP_X_FORWARDED_FOR="192.0.2.200")
    app.gate.set()
    for other in others:
        other.join()
    assert saved[0] == "200 OK"


def test_an_other_request_identical_to_one_in_flight_is_told_busy_instead_of_waiting():
    app = App()
    app.gate = threading.Event()
    cache = cache_for(app, saved=False)
    first = start(cache, unique(1), "192.0.2.1")
    wait_for(lambda: app.calls == 1)
    status = request(cache, unique(1), HTTP_X_FORWARDED_FOR="192.0.2.2")[0]
    app.gate.set()
    first.join()
    assert status == "429 TOO MANY REQUESTS"


def test_a_stale_other_answer_is_refreshed_only_within_the_budget(monkeypatch):
    monkeypatch.setattr(public_cache, "OTHER_BURST", 1)
    monkeypatch.setattr(public_cache, "OTHER_PER_MINUTE", 0.001)
    app = App()
    cache = cache_for(app, ttl=0.05, saved=False)
    request(cache, unique(1))
    time.sleep(0.1)
    answers = [request(cache, unique(1))[1]["X-Public-Replay"] for _ in range(3)]
    time.sleep(0.1)
    assert (answers, app.calls) == (["stale"] * 3, 1)


def test_variants_of_one_saved_request_share_one_answer_and_reach_superset_once():
    """A browser's body and the dashboard's own differ in what Superset does not read: both are the
    chart's saved request (is_saved names it), so one answer serves both."""
    app = App()
    variants = [BODY, BODY.replace(b"}]}", b'}], "form_data": {"label_colors": {}}}')]
    cache = public_cache.PublicChartCache(app, 60, lambda environ: False, lambda body: "saved:1:2")
    answers = {request(cache, body)[2] for body in variants for _ in range(3)}
    assert (answers, app.calls) == ({b"1"}, 1)


def test_a_saved_looking_body_that_is_not_json_is_keyed_apart_and_cannot_set_the_saved_answer():
    app = App(status="400 BAD REQUEST")
    cache = public_cache.PublicChartCache(app, 60, lambda environ: False, lambda body: "saved:1:2")
    request(cache, BODY, CONTENT_TYPE="text/plain")  # Superset: "Request is not JSON", kept as its own
    app.status = "200 OK"
    assert request(cache, BODY)[:1] + (app.calls,) == ("200 OK", 2)
