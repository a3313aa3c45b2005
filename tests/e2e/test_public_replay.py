"""The replay of anonymous chart-data answers (superset/public_cache.py) in the real Superset
(issue 18): each client gets an encoding it offered, only a verified login skips the replay and
its bounds, and the dashboard's saved requests are answered under a flood of ever-new requests.

Requests come from documentation addresses (X-Forwarded-For, as from the tunnel), a fresh one per
request unless a test says otherwise. Answers carry X-Public-Replay (hit, stale, miss, busy)."""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import threading
import time
import urllib.parse
from collections import Counter

import pytest

from tests.support.superset_api import SupersetClient, dashboard_request

TIMELINE = "Real-time event timeline (events per minute)"
#: A valid dashboard filter on the timeline: IN on the event_type filter's column.
FILTER_COLUMN = "event_type"

_addresses = (f"203.0.113.{i % 250 + 1}" if i < 250 else f"198.18.{i // 250}.{i % 250 + 1}" for i in itertools.count())
_values = itertools.count()


def fresh_address() -> str:
    return next(_addresses)


def ever_new_filter(charts: dict, dashboard: dict) -> bytes:
    """A valid dashboard-filter request no one sent before (a value of its own)."""
    chosen = [{"col": FILTER_COLUMN, "op": "IN", "val": [f"never-seen-{time.time_ns()}-{next(_values)}"]}]
    return json.dumps(dashboard_request(charts[TIMELINE], dashboard["id"], chosen)).encode()


def post(
    base: str, body: bytes, headers: dict | None = None, address: str | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One chart-data POST with exactly these headers (no Accept-Encoding unless given)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=90)
    try:
        conn.putrequest("POST", "/api/v1/chart/data", skip_accept_encoding=True)
        for name, value in {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "X-Forwarded-For": address or fresh_address(),
            **(headers or {}),
        }.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def charts(superset, produced) -> dict[str, dict]:
    """The dashboard's charts, once the marts they read exist (and hold the known events)."""
    return superset.charts()


@pytest.fixture(scope="module")
def saved(dashboard, charts) -> list[bytes]:
    """The dashboard's saved requests, as it posts them."""
    return [json.dumps(dashboard_request(chart, dashboard["id"])).encode() for chart in charts.values()]


# --- encodings ---------------------------------------------------------------------------------


def test_an_answer_first_asked_with_zstd_reaches_a_client_offering_no_encoding_readable(base, dashboard, charts):
    body = ever_new_filter(charts, dashboard)  # never asked before: the zstd client's answer is the kept one
    first = post(base, body, {"Accept-Encoding": "zstd"})
    plain = post(base, body)
    zipped = post(base, body, {"Accept-Encoding": "gzip"})
    assert (first[0], first[1]["Content-Encoding"], plain[0], plain[1]["Content-Encoding"]) == (
        200,
        "zstd",
        200,
        None,
    ), plain[2][:500]
    # each readable (the answer may have been refreshed in between: compared by its shape)
    assert [r["colnames"] for r in json.loads(gzip.decompress(zipped[2]))["result"]] == [
        r["colnames"] for r in json.loads(plain[2])["result"]
    ]


@pytest.mark.parametrize("accept", ["br", "zstd", "gzip;q=0", "gzip;q=0, identity", "x-unknown", "*;q=0"])
def test_no_client_gets_an_encoding_it_did_not_offer(accept, base, saved):
    post(base, saved[0], {"Accept-Encoding": "zstd, br, gzip"})
    status, headers, _ = post(base, saved[0], {"Accept-Encoding": accept})
    offered = {part.split(";")[0].strip() for part in accept.split(",") if "q=0" not in part.replace(" ", "")}
    assert status == 200 and headers["Content-Encoding"] in {None, *offered} and headers["Vary"] == "Accept-Encoding"


# --- only a verified login skips the replay ------------------------------------------------------

MARKERS = {
    "remember-cookie": {"Cookie": "remember_token=x"},
    "remember-cookie-forged": {"Cookie": "remember_token=1|" + "0" * 128},
    "session-cookie-forged": {"Cookie": "session=eyJfdXNlcl9pZCI6IjEifQ.forged.signature"},
    "authorization-junk": {"Authorization": "junk"},
    "bearer-junk": {"Authorization": "Bearer abc.def.ghi"},
    "guest-token": {"X-GuestToken": "junk"},
}


#: Superset's gunicorn workers (compose's superset command): each keeps a replay of its own
WORKERS = 2


def test_a_saved_request_with_keys_superset_does_not_read_shares_the_saved_answer(base, saved):
    """As browsers post it (form_data keys of their own, url_params), every variant different: keyed
    by the chart, they miss at most once per worker; keyed by their bytes, each would miss."""
    states = []
    for i in range(3 * WORKERS):
        variant = json.loads(saved[2])
        variant["form_data"]["label_colors"] = {"view": f"#{i:06x}"}
        variant["queries"][0]["url_params"] = {"preselect": str(i)}
        status, headers, _ = post(base, json.dumps(variant).encode())
        states.append((status, headers["X-Public-Replay"]))
    assert {s for s, _ in states} == {200} and sum(state == "miss" for _, state in states) <= WORKERS, states


@pytest.mark.parametrize("marker", sorted(MARKERS))
def test_a_cookie_or_header_merely_present_is_answered_from_the_replay(marker, base, saved):
    """Through the replay (its header says how; a request that skips it has none), whichever of
    Superset's workers (each with its own replay) takes it."""
    post(base, saved[1])
    status, headers, _ = post(base, saved[1], MARKERS[marker])
    assert (status, headers.get("X-Public-Replay")) in {(200, "hit"), (200, "stale"), (200, "miss")}


def test_cookies_and_headers_merely_present_do_not_skip_the_bound_on_ever_new_requests(base, dashboard, charts):
    """One address sends 12 ever-new filter requests at once with every marker: beyond its share of
    turns it is told busy, and no request passes the replay."""
    address = fresh_address()
    markers = {"Cookie": "remember_token=x", "Authorization": "Bearer junk", "X-GuestToken": "junk"}
    answers: list[str | None] = []

    def ask() -> None:
        answers.append(post(base, ever_new_filter(charts, dashboard), markers, address)[1]["X-Public-Replay"])

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "busy" in answers and None not in answers, answers


def _session_cookie(client: SupersetClient) -> str:
    jar = next(h.cookiejar for h in client.opener.handlers if hasattr(h, "cookiejar"))
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def test_a_verified_session_or_token_passes_straight_through(base, env, superset, saved):
    token = SupersetClient(base).api_token(env["SUPERSET_ADMIN_USER"], env["SUPERSET_ADMIN_PASSWORD"])
    by_token = post(base, saved[2], {"Authorization": f"Bearer {token}"})
    by_session = post(base, saved[2], {"Cookie": _session_cookie(superset)})
    assert (by_token[0], by_token[1]["X-Public-Replay"], by_session[0], by_session[1]["X-Public-Replay"]) == (
        200,
        None,
        200,
        None,
    )


# --- shares and bounds under a flood -------------------------------------------------------------


@pytest.mark.empties_the_public_budget
def test_the_dashboards_saved_requests_are_answered_under_a_flood_of_ever_new_requests(base, dashboard, charts, saved):
    """20 clients at their own addresses send valid, ever-new filter requests as fast as they are
    answered for 20 s; a viewer asks for the dashboard's charts all along. The viewer gets every
    chart; the flood's answers from Superset are no more than the other requests' budget."""
    seconds, stop = 20.0, threading.Event()
    flood: Counter = Counter()
    lock = threading.Lock()

    def flooder(address: str) -> None:
        while not stop.is_set():
            status, headers, _ = post(base, ever_new_filter(charts, dashboard), {"Accept-Encoding": "br"}, address)
            with lock:
                flood[(status, headers["X-Public-Replay"])] += 1

    threads = [threading.Thread(target=flooder, args=(fresh_address(),)) for _ in range(20)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    viewer: Counter = Counter()
    address = fresh_address()
    while time.monotonic() - started < seconds:
        for body in saved:
            viewer[post(base, body, {"Accept-Encoding": "gzip"}, address)[0]] += 1
        time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    # 2 gunicorn workers, each: a burst of 10, then 20 a minute (public_cache.OTHER_*)
    budget = 2 * (10 + 20 * elapsed / 60)
    reached = flood[(200, "miss")]
    assert set(viewer) == {200} and flood[(429, "busy")] > 0 and reached <= budget, (viewer, flood)
