"""The public contract of the `user_events` and `user_profiles` topics (see DESIGN.md).

Any producer may write to the topics, so the consumer validates every message against these
types; msgspec does the decoding and the type checks in C, which keeps validation off the
consumer's critical path.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = 1
KNOWN_EVENT_TYPES = ("view", "click", "purchase")
BIGINT_MAX = 2**63 - 1
# Money is carried in whole cents so that sums are exact whatever the batch boundaries.
AMOUNT_MAX = 1_000_000_000

EventType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=50)]
PositiveId = Annotated[int, msgspec.Meta(ge=1, le=BIGINT_MAX)]
AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]
CountryCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
ShortText = Annotated[str, msgspec.Meta(max_length=2048)]
# Postgres text cannot hold NUL: refuse it at the contract instead of failing a write.
StoredText = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$", min_length=1, max_length=320)]


class Event(msgspec.Struct, frozen=True):
    """One user-behaviour event: the value of a `user_events` message (key = user_id as text)."""

    schema_version: Literal[1]
    event_id: uuid.UUID
    event_type: EventType
    user_id: PositiveId
    session_id: uuid.UUID
    occurred_at: AwareDatetime
    page: ShortText | None = None
    product_id: PositiveId | None = None
    amount: Annotated[float, msgspec.Meta(ge=0, le=AMOUNT_MAX)] | None = None
    device: Annotated[str, msgspec.Meta(max_length=50)] | None = None
    country: CountryCode | None = None


class UserProfile(msgspec.Struct, frozen=True):
    """A user's profile: the value of a compacted `user_profiles` message (key = user_id as text).

    `updated_at` orders versions: the newest one wins whatever order messages arrive in.
    """

    user_id: PositiveId
    name: StoredText
    email: StoredText
    country: CountryCode
    signup_date: dt.date
    plan: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=50)]
    updated_at: AwareDatetime


class InvalidMessage(ValueError):
    """A message that breaks the contract; its text is the dead-letter reason."""


_event_decoder = msgspec.json.Decoder(Event)
_profile_decoder = msgspec.json.Decoder(UserProfile)
event_encoder = msgspec.json.Encoder()


def decode_event(value: bytes | None, max_bytes: int) -> Event:
    """The event in `value`, or InvalidMessage saying why it breaks the contract."""
    if value is None:
        raise InvalidMessage("empty message (null value)")
    if len(value) > max_bytes:
        raise InvalidMessage(f"oversize message: {len(value)} bytes > limit {max_bytes}")
    try:
        event = _event_decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidMessage(str(exc)) from None
    if event.amount is not None and event.event_type != "purchase":
        raise InvalidMessage(f"amount is only allowed on purchases, got it on {event.event_type!r}")
    return event


def decode_profile(value: bytes | None, max_bytes: int) -> UserProfile:
    """The profile in `value`, or InvalidMessage saying why it breaks the contract."""
    if value is None:
        raise InvalidMessage("tombstone (null value): profile deletion is not part of the contract")
    if len(value) > max_bytes:
        raise InvalidMessage(f"oversize message: {len(value)} bytes > limit {max_bytes}")
    try:
        return _profile_decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidMessage(str(exc)) from None


def amount_cents(amount: float | None) -> int:
    return 0 if amount is None else round(amount * 100)
