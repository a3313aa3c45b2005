"""The client-address rule the collector and Superset share (common/client_address.py)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from common.client_address import client_address, parse_address, rate_limit_key

PEER = "192.0.2.1"
#: what a client may put in X-Forwarded-For lines before the proxy appends its address
claims = st.lists(st.text(max_size=40).filter(lambda s: "\n" not in s), max_size=4)
addresses = st.ip_addresses()


def appended(lines: list[str], address: str) -> list[str]:
    """The proxy's append: to the last line when there is one, else a line of its own."""
    return [*lines[:-1], f"{lines[-1]}, {address}"] if lines else [address]


@given(claims, addresses)
def test_the_address_the_proxy_appended_wins_whatever_the_client_sent_before_it(lines, address):
    assert client_address(appended(lines, str(address)), PEER) == parse_address(str(address))


@given(claims, addresses, addresses)
def test_the_lines_count_as_one_header_joined_in_order(lines, first, last):
    """A proxy that adds its own line instead of appending to the client's gives the same client."""
    split = [*lines, str(first), str(last)]
    assert client_address(split, PEER) == client_address([",".join(split)], PEER) == parse_address(str(last))


@given(claims)
def test_a_last_entry_that_is_no_address_falls_back_to_the_peer(lines):
    garbage = [*lines, "not-an-address"] if lines else ["unknown"]
    assert client_address(garbage, PEER) == ipaddress.ip_address(PEER)
    assert client_address([*lines, "203.0.113.9,"], PEER) == ipaddress.ip_address(PEER)


@given(claims, addresses)
def test_an_untrusted_header_is_ignored(lines, address):
    assert client_address(appended(lines, str(address)), PEER, trust_forwarded_for=False) == ipaddress.ip_address(PEER)


def test_no_header_is_the_peer_and_no_peer_is_unknown():
    assert client_address([], PEER) == ipaddress.ip_address(PEER)
    assert rate_limit_key(client_address([], None)) == "unknown"


def test_proxy_spellings_of_an_address_are_the_address():
    assert parse_address(" 203.0.113.9 ") == parse_address("203.0.113.9:4431") == ipaddress.ip_address("203.0.113.9")
    assert parse_address("[2001:db8::1]:443") == parse_address("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    assert parse_address("::ffff:203.0.113.9") == ipaddress.ip_address("203.0.113.9")
    assert parse_address("2001:db8::1:443") == ipaddress.ip_address("2001:db8::1:443")  # no port in bare IPv6
    for bad in ("", "[2001:db8::1", "example.com", "203.0.113.256", "unknown", "1.2.3.4.5"):
        assert parse_address(bad) is None, bad


@given(st.ip_addresses(v=6), st.integers(0, 2**64 - 1))
def test_ipv6_addresses_of_one_64_share_a_key(address, host):
    same_net = ipaddress.IPv6Address(int(address) >> 64 << 64 | host)
    assert rate_limit_key(address) == rate_limit_key(same_net)


@given(st.ip_addresses(v=6), st.integers(1, 2**64 - 1))
def test_ipv6_addresses_of_other_64s_do_not(address, step):
    other = ipaddress.IPv6Address((int(address) + (step << 64)) % 2**128)
    assert (rate_limit_key(address) == rate_limit_key(other)) == (int(address) >> 64 == int(other) >> 64)


@given(st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_each_ipv4_address_has_a_key_of_its_own(a, b):
    assert (rate_limit_key(a) == rate_limit_key(b)) == (a == b)
    assert rate_limit_key(a) == str(a)


def test_an_ipv4_mapped_ipv6_client_counts_as_its_ipv4_address():
    assert rate_limit_key(client_address(["::ffff:198.51.100.7"], PEER)) == "198.51.100.7"
