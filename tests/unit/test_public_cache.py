"""superset/public_cache.py, the replay of anonymous chart-data answers, as WSGI middleware around a
stand-in app that counts what reaches it (tests/e2e/test_public_view.py runs it in Superset)."""

from __future__ import annotations

import importlib.util
import io
import threading
import time

import pytest

from tests.unit.test_compose import ROOT

spec = importlib.util.spec_from_file_location("public_cache", ROOT / "superset" / "public_cache.py")
public_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(public_cache)

BODY = b'{"queries": [{"metrics": ["events"]}]}'


class App:
    """Answers each request with its own number; `status` and `gate` shape the answer."""

    def __init__(self, status: str = "200 OK") -> None:
        self.calls, self.status = 0, status
        self.gate: threading.Event | None = None

    def __call__(self, environ, start_response):
        self.calls += 1
        number = self.calls
        if self.gate is not None:
            self.gate.wait(10)
        environ["wsgi.input"].read()
        start_response(self.status, [("Content-Type", "application/json"), ("Set-Cookie", f"session={number}")])
        return [str(number).encode()]


def request(cache, body: bytes = BODY, **extra) -> tuple[str, dict, bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/v1/chart/data",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        **extra,
    }
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)

    answer = b"".join(cache(environ, start_response))
    return seen["status"], seen["headers"], answer


def cache_for(app: App, ttl: float = 60, logged_in: bool = False):
    return public_cache.PublicChartCache(app, ttl, lambda environ: logged_in)


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
    cache = cache_for(app)
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


def test_requests_with_a_token_pass_straight_through():
    app = App()
    cache = cache_for(app)
    request(cache, HTTP_AUTHORIZATION="Bearer t"), request(cache, HTTP_AUTHORIZATION="Bearer t")
    assert app.calls == 2


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


def test_an_answer_older_than_the_staleness_bound_is_dropped(monkeypatch):
    app = App()
    cache = cache_for(app, ttl=0.01)
    request(cache)
    monkeypatch.setattr(public_cache, "MAX_STALE", 0.0)
    time.sleep(0.05)
    assert request(cache)[2] == b"2"
