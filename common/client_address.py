"""Who sent a request, for the per-client rate limits of the collector and of Superset: one rule,
standard library only (Superset imports it from its own virtualenv).

Behind one trusted proxy (the tunnel), the client is the address that proxy appended to
X-Forwarded-For: the header's lines are joined in order with "," (as WSGI servers join repeated
headers) and the last entry is taken; everything before it is the client's own say. A last entry
that is not an IP address (the proxy always appends one, so the request did not come through it
as it should) falls back to the peer's address, as does a missing header.

Limits count per `rate_limit_key`: an IPv4 address on its own, an IPv6 address by its /64 (one
subscriber's network: a host there can take any of 2^64 addresses, so counting per address would
be no limit at all).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """An IP address as proxies write it (`203.0.113.9`, `2001:db8::1`, `[2001:db8::1]`, with or
    without a port after it); None for anything else. IPv4-mapped IPv6 is the IPv4 address."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(forwarded_for: Iterable[str], peer: str | None, trust_forwarded_for: bool = True) -> Address | None:
    """The client of a request: the last X-Forwarded-For entry when a proxy is trusted and it is an
    address, else the peer (None when neither is an address)."""
    if trust_forwarded_for:
        joined = ",".join(forwarded_for)
        if joined:
            address = parse_address(joined.rsplit(",", 1)[-1])
            if address is not None:
                return address
    return parse_address(peer) if peer else None


def rate_limit_key(address: Address | None) -> str:
    """The bucket an address counts in: the IPv4 address, or the IPv6 address's /64."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)
