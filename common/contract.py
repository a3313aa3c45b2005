"""The public contract of the `user_events` and `user_profiles` topics (README, "The event contract").

Any producer may write to the topics, so the consumer validates every message against these
types; msgspec does the decoding and the type checks in C, which keeps validation off the
consumer's critical path.

Every field is bounded so that no message that passes can break a later stage: patterns match
the whole string (`\\A...\\Z`: `$` would accept a trailing newline), text that Postgres stores
cannot hold NUL, event times lie between EVENT_TIME_FLOOR and a small skew past the time the
message reached Kafka, and amounts are capped so that no sum a table or mart keeps can overflow
(README, "The event contract", states each bound). The utm_* values are printable: no control,
format (zero-width, bidi), surrogate or private-use character, no separator but the space; a
referrer is an absolute http(s) URL of printable ASCII whose host a mart reads without a URL parser.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from enum import StrEnum
from typing import Annotated, Literal

import msgspec

BIGINT_MAX = 2**63 - 1
# Money is carried in whole cents so that sums are exact whatever the batch boundaries. Revenue
# columns are numeric(38, 2): 10^25 purchases at this cap before any sum could overflow.
AMOUNT_MAX = 1_000_000_000
# No event or profile version is older than this: it bounds every duration a mart computes.
EVENT_TIME_FLOOR = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_FLOOR_EPOCH = EVENT_TIME_FLOOR.timestamp()
# ... and none is later than the time the message reached Kafka plus this (CONSUMER_MAX_FUTURE_SKEW).
DEFAULT_MAX_FUTURE_SKEW = dt.timedelta(minutes=5)
# A Kafka header as confluent_kafka gives and takes it: (name, value), None for a null value.
Header = tuple[str, str | bytes | None]
# A Kafka header by which a producer says that an event may reach the topic more than once with
# the same event_id: the collector sets it, since its HTTP clients retry. The consumer counts such
# an event once per (user_id, event_id) within its dedup window (CONSUMER_DEDUP_WINDOW_SECONDS). Events without it cost
# nothing there: a producer that mints each id once and sends with Kafka's idempotence (which
# drops its own retries), as kafka_producer does, cannot repeat one.
MAY_REPEAT_HEADER: Header = ("event-ids", b"may-repeat")
# The event type by which a visitor's anonymous `user_id` says which known user it is
# (`identified_user_id`); the marts count the anonymous id's events under the known one.
IDENTIFY = "identify"

_WORD = r"\A[a-z][a-z0-9_]*\Z"
EventType = Annotated[str, msgspec.Meta(pattern=_WORD, max_length=50)]
PositiveId = Annotated[int, msgspec.Meta(ge=1, le=BIGINT_MAX)]
AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]
CountryCode = Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{2}\Z")]
ShortText = Annotated[str, msgspec.Meta(max_length=2048)]
# Postgres text cannot hold NUL: refuse it at the contract instead of failing a write.
StoredText = Annotated[str, msgspec.Meta(pattern=r"\A[^\x00]*\Z", min_length=1, max_length=320)]
Amount = Annotated[float, msgspec.Meta(ge=0, le=AMOUNT_MAX)]
# What is not printable in a utm_* value, as a regex class (Python's re has no \p{...}): the Unicode
# categories Cc (C0 and C1 controls, DEL), Cf (format: soft hyphen, zero-width, bidi controls, tags),
# Cs (surrogates), Co (private use), Zl, Zp and every Zs but the space (no-break spaces included).
# Unassigned code points pass, so that a browser's newer emoji is not refused (the class lists a few
# ahead of Python 3.11's Unicode 14: Unicode 15's U+13439-1343F; planes 15 and 16 whole).
# tests/unit/test_contract.py checks the class against the Unicode database of the running Python.
NOT_PRINTABLE = (
    r"\x00-\x1f\x7f-\xa0\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u1680\u180e"
    r"\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ud800-\uf8ff\ufeff\ufff9-\ufffb"
    r"\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    r"\U000e0001\U000e0020-\U000e007f\U000f0000-\U0010ffff"
)
_NOT_PRINTABLE_CHAR = re.compile(f"[{NOT_PRINTABLE}]")
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign")
UTM_MAX = 100
REFERRER_MAX = 2048
# utm_source, utm_medium, utm_campaign: 1 to 100 printable characters (spaces inside allowed).
# Printable is checked by decode_event, not by a msgspec pattern: msgspec calls a pattern's search()
# for each value (0.2 µs before any matching, 0.3 to 1.5 µs a value with this class), where
# str.isprintable() passes nearly every value in C, and only a value it refuses (isprintable also
# refuses unassigned code points) is searched for a character of NOT_PRINTABLE.
UtmText = Annotated[str, msgspec.Meta(min_length=1, max_length=UTM_MAX)]
# A URL as browsers give document.referrer (RFC 3986: ASCII, anything else percent-encoded):
# `http://` or `https://` (lower case), a host[:port] of RFC 3986's characters starting with a
# letter, digit or `[` (an IDN host in punycode), no userinfo (no `@`: browsers strip it, and it
# would make the host ambiguous), then optionally a path, query or fragment of printable ASCII
# (`!` to `~`: no space, no control). So the host is what lies between `//` and the first `/`,
# `?`, `#` or port's `:` (an IPv6 host is in brackets).
Url = Annotated[
    str,
    msgspec.Meta(
        pattern=r"\Ahttps?://[A-Za-z0-9\[][A-Za-z0-9._~%!$&'()*+,;=:\[\]-]*(?:[/?#][!-~]*)?\Z",
        max_length=REFERRER_MAX,
    ),
]


# gc=False (here and on UserProfile): the fields are scalars, strings, UUIDs and datetimes, so no
# instance can be part of a reference cycle, and the garbage collector need not track the one
# decoded per message.
class Event(msgspec.Struct, frozen=True, gc=False):
    """One user-behaviour event: the value of a `user_events` message (key = user_id as text)."""

    schema_version: Literal[1]
    event_id: uuid.UUID
    event_type: EventType
    user_id: PositiveId
    session_id: uuid.UUID
    occurred_at: AwareDatetime
    page: ShortText | None = None
    product_id: PositiveId | None = None
    amount: Amount | None = None
    device: Annotated[str, msgspec.Meta(max_length=50)] | None = None
    country: CountryCode | None = None
    referrer: Url | None = None
    utm_source: UtmText | None = None
    utm_medium: UtmText | None = None
    utm_campaign: UtmText | None = None
    # On `identify` events only, and required there: the known user the anonymous `user_id` is.
    identified_user_id: PositiveId | None = None


class UserProfile(msgspec.Struct, frozen=True, gc=False):
    """A user's profile: the value of a compacted `user_profiles` message (key = user_id as text).

    `updated_at` orders versions: the newest one wins whatever order messages arrive in.
    """

    user_id: PositiveId
    name: StoredText
    email: StoredText
    country: CountryCode
    signup_date: dt.date
    plan: Annotated[str, msgspec.Meta(pattern=_WORD, max_length=50)]
    updated_at: AwareDatetime


class Reason(StrEnum):
    """Why a message is a dead letter, in one word: the `reason` column and the metrics' label."""

    NULL_VALUE = "null_value"
    OVERSIZE = "oversize"
    MALFORMED = "malformed"  # not JSON, or not UTF-8
    CONTRACT = "contract"  # JSON that breaks the types: a missing field, a wrong type or pattern
    EVENT_TIME = "event_time"  # before EVENT_TIME_FLOOR or too far in the future
    KEY_MISMATCH = "key_mismatch"
    UNEXPECTED_TOPIC = "unexpected_topic"
    REFUSED_BY_POSTGRES = "refused_by_postgres"  # a value Postgres refused (SQLSTATE class 22 or 23)
    INTERNAL_ERROR = "internal_error"  # the consumer failed on this message: a bug, filed instead of a crash


class InvalidMessage(ValueError):
    """A message that breaks the contract; its text is the dead-letter error, `reason` its category."""

    def __init__(self, reason: Reason, error: str) -> None:
        super().__init__(error)
        self.reason = reason


_event_decoder = msgspec.json.Decoder(Event)
_profile_decoder = msgspec.json.Decoder(UserProfile)


def _refusal(exc: Exception) -> InvalidMessage:
    if isinstance(exc, msgspec.ValidationError):
        return InvalidMessage(Reason.CONTRACT, str(exc))
    if isinstance(exc, RecursionError):  # msgspec recurses per nesting level: `[[[[...` exhausts the stack
        return InvalidMessage(Reason.MALFORMED, "JSON nested too deeply")
    if isinstance(exc, UnicodeDecodeError):  # msgspec's answer to a string that is not UTF-8
        return InvalidMessage(Reason.MALFORMED, f"not UTF-8: {exc}")
    return InvalidMessage(Reason.MALFORMED, str(exc))


def _check_size(value: bytes | None, max_bytes: int, null_error: str) -> bytes:
    """`value`, or InvalidMessage if it is null or over `max_bytes`."""
    if value is None:
        raise InvalidMessage(Reason.NULL_VALUE, null_error)
    if len(value) > max_bytes:
        raise InvalidMessage(Reason.OVERSIZE, f"oversize message: {len(value)} bytes > limit {max_bytes}")
    return value


def check_time(field: str, at: dt.datetime, latest: float) -> float:
    """`at` in epoch seconds, or InvalidMessage if it is before EVENT_TIME_FLOOR or after `latest`
    (epoch seconds: the message's arrival in Kafka plus the skew). Floats, not datetimes: this runs
    for every message, and building a datetime for `latest` costs more than the whole check."""
    ts = at.timestamp()
    if ts < _FLOOR_EPOCH:
        raise InvalidMessage(
            Reason.EVENT_TIME, f"{field} {at.isoformat()} is before the contract's floor {EVENT_TIME_FLOOR.isoformat()}"
        )
    if ts > latest:
        raise InvalidMessage(
            Reason.EVENT_TIME,
            f"{field} {at.isoformat()} is in the future: later than "
            f"{dt.datetime.fromtimestamp(latest, dt.UTC).isoformat()} "
            "(the message's arrival plus CONSUMER_MAX_FUTURE_SKEW)",
        )
    return ts


def decode_event(value: bytes | None, max_bytes: int, latest: float) -> tuple[Event, float]:
    """The event in `value` and its `occurred_at` in epoch seconds, or InvalidMessage saying why it
    breaks the contract. `latest` (epoch seconds) is the latest acceptable `occurred_at`: when the
    message reached Kafka plus the skew.

    The consumer's hot path: a valid event costs one Python call here, the rest is msgspec's C."""
    if value is None or len(value) > max_bytes:
        value = _check_size(value, max_bytes, "empty message (null value)")  # raises
    try:
        event = _event_decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise _refusal(exc) from None
    ts = event.occurred_at.timestamp()
    if ts < _FLOOR_EPOCH or ts > latest:
        check_time("occurred_at", event.occurred_at, latest)
    if event.amount is not None and event.event_type != "purchase":
        raise InvalidMessage(Reason.CONTRACT, f"amount is only allowed on purchases, got it on {event.event_type!r}")
    if event.utm_source is not None or event.utm_medium is not None or event.utm_campaign is not None:
        _check_printable(event)
    # identified_user_id on identify events, and only there: one comparison for the common case
    if (event.identified_user_id is None) == (event.event_type == IDENTIFY):
        raise _identify_refusal(event)
    return event, ts


def _check_printable(event: Event) -> None:
    for field in UTM_FIELDS:
        value = getattr(event, field)
        if value is not None and not value.isprintable():
            bad = _NOT_PRINTABLE_CHAR.search(value)
            if bad is not None:
                raise InvalidMessage(
                    Reason.CONTRACT, f"Expected `str` of printable characters, got U+{ord(bad[0]):04X} - at `$.{field}`"
                )


def _identify_refusal(event: Event) -> InvalidMessage:
    if event.event_type == IDENTIFY:
        return InvalidMessage(Reason.CONTRACT, "identified_user_id is required on identify events")
    return InvalidMessage(
        Reason.CONTRACT, f"identified_user_id is only allowed on identify events, got it on {event.event_type!r}"
    )


def decode_profile(value: bytes | None, max_bytes: int, latest: float) -> UserProfile:
    """The profile in `value`, or InvalidMessage saying why it breaks the contract (`latest` as
    for decode_event)."""
    # The consumer takes a tombstone (null value) as the deletion of its key's user before it decodes.
    value = _check_size(value, max_bytes, "tombstone (null value): a deletion, not a profile")
    try:
        profile = _profile_decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise _refusal(exc) from None
    check_time("updated_at", profile.updated_at, latest)
    return profile


def amount_cents(amount: float | None) -> int:
    return 0 if amount is None else round(amount * 100)
