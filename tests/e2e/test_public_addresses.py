"""Who a visitor is, as the real Superset counts its rate limits (common/client_address.py, the
collector's rule too): X-Forwarded-For's lines joined in order, the last entry the client, and
an IPv6 client counted by its /64. Measured on the login limit (SUPERSET_RATE_LIMIT_LOGIN), the
smallest; each test uses documentation addresses of its own, so no other test's count touches it."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

GUESS = json.dumps({"username": "admin", "password": "not-the-password", "provider": "db"}).encode()


@pytest.fixture(scope="module")
def limit(env) -> int:
    """SUPERSET_RATE_LIMIT_LOGIN's count per minute ("10/minute")."""
    count, _, period = env["SUPERSET_RATE_LIMIT_LOGIN"].partition("/")
    assert period.strip() in ("minute", "1 minute"), "these tests read a per-minute login limit"
    return int(count)


@pytest.fixture(scope="module")
def login(env):
    """An API login with a wrong password; X-Forwarded-For sent as these header lines: its status."""
    url = urllib.parse.urlsplit(f"http://127.0.0.1:{env['SUPERSET_PORT']}")

    def attempt(*forwarded_for: str) -> int:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            conn.putrequest("POST", "/api/v1/security/login")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(GUESS)))
            for line in forwarded_for:
                conn.putheader("X-Forwarded-For", line)
            conn.endheaders(GUESS)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    return attempt


def test_two_ipv6_addresses_of_one_64_share_a_rate_limit_count(login, limit):
    network = "2001:db8:e2e:1"
    statuses = [login(f"{network}::{i + 1:x}") for i in range(limit)]
    assert 429 not in statuses, statuses
    assert login(f"{network}:ffff:ffff:ffff:ffff") == 429  # another address, the same /64
    assert login("2001:db8:e2e:2::1") != 429  # the next /64 counts on its own


def test_the_client_is_the_last_entry_of_the_joined_header_lines(login, limit):
    """Whatever the client writes in the lines before, the entry the proxy appended last counts."""
    client = "192.0.2.77"
    statuses = [login(f"192.0.2.{100 + i}", client) for i in range(limit)]
    assert 429 not in statuses, statuses
    assert login("192.0.2.200, 192.0.2.201", client) == 429
    assert login(client, "192.0.2.78") != 429  # the first line is not the client
