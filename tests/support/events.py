"""Events and profiles on the topics' contract (common/contract.py), built one way for every test
tier and benchmark: a dict to change or break, and the bytes a producer sends."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

#: One event with every field set, each inside its bound (but identified_user_id: identify events only).
VALID_EVENT: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "5f0b7c1e-8d3a-4e0c-9a51-2f1f7d9c3b10",
    "event_type": "purchase",
    "user_id": 42,
    "session_id": "0c8e1f4a-7b2d-4a66-b1f3-9d2e5c7a8b90",
    "occurred_at": "2026-11-22T15:04:05.123Z",
    "page": "/products/17",
    "product_id": 17,
    "amount": 19.99,
    "device": "mobile",
    "country": "US",
    "referrer": "https://www.example.com/blog/coffee?ref=nav",
    "utm_source": "newsletter",
    "utm_medium": "email",
    "utm_campaign": "spring sale",
}

#: A visitor's browser, as every test and benchmark client of the collector presents itself (the
#: collector refuses bots' User-Agents, HTTP libraries' and headless browsers' included).
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)

#: The consumer's tables of aggregates (what a test truncates between runs); the dead letters,
#: event ids and offsets are listed where a test needs them too.
STREAMING_TABLES = (
    "streaming.user_events",
    "streaming.event_minutes",
    "streaming.sessions",
    "streaming.users",
    "streaming.event_log",
    "streaming.user_last_seen",
    "streaming.identities",
    # kept by a rebuild, but a test's deletions must not reach the next test
    "streaming.deleted_users",
)


def rfc3339(at: dt.datetime, timespec: str = "auto") -> str:
    """An aware datetime as the contract's text, UTC written `Z`."""
    return at.isoformat(timespec=timespec).replace("+00:00", "Z")


def event(
    user_id: int = 1,
    event_type: str = "view",
    *,
    session_id: str | uuid.UUID | None = None,
    occurred_at: dt.datetime | str | None = None,
    amount: float | None = None,
    event_id: str | uuid.UUID | None = None,
    timespec: str = "auto",
    **fields: Any,
) -> dict[str, Any]:
    """An event as a JSON-ready dict: a new event_id and session unless given, occurred_at now
    unless given (a datetime is written with `timespec`), any other field as given."""
    if occurred_at is None:
        occurred_at = dt.datetime.now(dt.UTC)
    if isinstance(occurred_at, dt.datetime):
        occurred_at = rfc3339(occurred_at, timespec)
    return {
        "schema_version": 1,
        "event_id": str(event_id or uuid.uuid4()),
        "event_type": event_type,
        "user_id": user_id,
        "session_id": str(session_id or uuid.uuid4()),
        "occurred_at": occurred_at,
        "amount": amount,
        **fields,
    }


def encode(value: dict[str, Any]) -> bytes:
    """The bytes a producer sends for an event or a profile."""
    return json.dumps(value).encode()


def event_json(*args: Any, **kwargs: Any) -> bytes:
    """encode(event(...))."""
    return encode(event(*args, **kwargs))


def key(value: dict[str, Any]) -> bytes:
    """The message key of an event or a profile: its user_id as decimal text."""
    return str(value["user_id"]).encode()
