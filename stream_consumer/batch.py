"""Pure micro-batch aggregation: messages in, the rows of one Postgres transaction out.

No Kafka client and no Postgres here. A message is anything with Kafka's Message accessors
(topic(), partition(), offset(), key(), value(), timestamp(), headers(); `KafkaMessage`): the
consumer's, or a `Record`.

No message can make `add` raise: whatever goes wrong while decoding, checking or aggregating one
message (the contract's InvalidMessage, or any other exception, which would be a bug of ours)
makes that message a dead letter, and the aggregates stay as they were before it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from common.contract import (
    BIGINT_MAX,
    DEFAULT_MAX_FUTURE_SKEW,
    IDENTIFY,
    MAY_REPEAT_HEADER,
    Header,
    InvalidMessage,
    Reason,
    UserProfile,
    amount_cents,
    decode_event,
    decode_profile,
)

if TYPE_CHECKING:
    from common.settings import Settings

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
#: What the dedup window remembers of an event: its user_id and event_id in one int (`event_key`).
#: Another user's event with the same id is another event (one visitor must not suppress another's
#: events by reusing their ids). One int, not a (user_id, event_id) tuple nor a uuid.UUID: an int is
#: hashed in C and is not tracked by the garbage collector, where the tuple and the UUID a batch
#: kept per event made every collection walk 50,000 more objects (docs/benchmarks.md, Streaming).
EventKey = int
#: event_key's shift of the user_id: above the event_id's 128 bits and 32 bits of zeros, where the
#: row that records the key in Postgres has its length word (store.copy_rows: one OR a key).
USER_SHIFT = 160
# confluent_kafka.TIMESTAMP_LOG_APPEND_TIME: the broker stamped the message when it arrived.
LOG_APPEND_TIME = 2

#: Deleted users as a batch reads them (streaming.deleted_users): user_id -> (deleted_at in epoch
#: milliseconds, suppress). NOBODY (never mutated) while no user is deleted: Batch.add then spends
#: one truthiness test per event on them.
DeletedUsers = dict[int, tuple[int, bool]]
NOBODY: DeletedUsers = {}


def forgotten(entry: tuple[int, bool] | None, kind: int, ms: int) -> bool:
    """Whether a message of a deleted user is dropped: `entry` is the user's (deleted_at in epoch
    ms, suppress), None if not deleted; (kind, ms) the message's Kafka timestamp. Dropped: every
    message of a suppressed user, and otherwise the ones the broker appended at or before the
    deletion (a rebuild's replay, or a consumer behind the deletion). A message without the
    broker's append time (a producer's create time proves nothing) cannot be shown to be later: dropped."""
    if entry is None:
        return False
    deleted_ms, suppress = entry
    return suppress or kind != LOG_APPEND_TIME or ms <= deleted_ms


@dataclasses.dataclass(slots=True)
class UserEventRow:
    """A batch's share of one streaming.user_events row, key (user_id, event_type)."""

    events: int
    first_at: dt.datetime
    last_at: dt.datetime


@dataclasses.dataclass(slots=True)
class MinuteRow:
    """A batch's share of one streaming.event_minutes row, key (minute, event_type)."""

    events: int
    revenue_cents: int


@dataclasses.dataclass(slots=True)
class SessionRow:
    """A batch's share of one streaming.sessions row, key (session_id, user_id)."""

    first_at: dt.datetime
    last_at: dt.datetime
    events: int
    purchases: int
    revenue_cents: int
    # First touch: of the session's earliest event in the batch (an earlier one replaces all five);
    # the referrer as sent, its host is read once per row at write time (store.first_touch_columns).
    landing_page: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: str | None
    raw_value: str | None
    reason: Reason
    error: str
    #: when the broker appended the message (LogAppendTime topics); None for producers' create times
    kafka_timestamp: dt.datetime | None
    #: raw_value is the whole message byte for byte, so it can be replayed
    raw_value_exact: bool = False


def _text(raw: bytes | None, limit: int) -> str | None:
    """Raw bytes as storable text: invalid UTF-8 and NUL escaped, cut at `limit` bytes."""
    if raw is None:
        return None
    return raw[:limit].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _exact(raw: bytes | None, limit: int) -> bool:
    """Whether _text(raw, limit) gives back exactly these bytes when encoded as UTF-8."""
    if raw is None or len(raw) > limit or b"\x00" in raw:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class KafkaMessage(Protocol):
    """What Batch reads of a Kafka message: confluent_kafka's Message accessors as a message
    consumed without error() has them (its stub says None too, for a Message built by hand or an
    error), or a `Record`."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...  # (timestamp type, epoch milliseconds)
    def headers(self) -> list[Header] | None: ...
    def set_headers(self, headers: list[Header] | None) -> None: ...


class Record:
    """A Kafka message as a plain value, with the accessors of confluent_kafka's Message that
    Batch.add reads: a dead letter replayed from Postgres, or a test's message. `appended` is when
    the broker appended it (a LogAppendTime topic); None stands for a producer's create time."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_timestamp", "_headers")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        appended: dt.datetime | None = None,
        headers: list[Header] | None = None,
    ) -> None:
        self._topic, self._partition, self._offset, self._key, self._value = topic, partition, offset, key, value
        self._timestamp = (LOG_APPEND_TIME, int(appended.timestamp() * 1000)) if appended else (0, -1)
        self._headers = headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def headers(self) -> list[Header] | None:
        return self._headers

    def set_headers(self, headers: list[Header] | None) -> None:
        self._headers = headers


def append_time(msg: KafkaMessage) -> dt.datetime | None:
    """When the broker appended the message; None where the topic keeps the producer's create time
    (anyone may set that to anything, so it proves nothing)."""
    kind, ms = msg.timestamp()
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC) if kind == LOG_APPEND_TIME else None


def event_key(user_id: int, event_id: uuid.UUID) -> EventKey:
    """The dedup window's key of a user's event: user_id << USER_SHIFT | the event_id's 128 bits."""
    return user_id << USER_SHIFT | event_id.int


#: The headers of a message that carries MAY_REPEAT_HEADER, once Batch read them (_may_repeat).
_MAY_REPEAT_ONLY: list[Header] = [MAY_REPEAT_HEADER]


def _may_repeat(msg: KafkaMessage) -> bool:
    """Whether the message carries MAY_REPEAT_HEADER. confluent_kafka decodes header names as UTF-8
    when asked for them: a name that is not (no client of ours can send one) makes it malformed."""
    try:
        headers = msg.headers()
    except UnicodeDecodeError as exc:
        raise InvalidMessage(Reason.MALFORMED, f"a header name is not UTF-8: {exc}") from None
    if headers is None:
        return False
    found = MAY_REPEAT_HEADER in headers
    # confluent_kafka keeps the headers it decoded in the message, as a list of tuples: for a
    # batch of messages with headers, two more objects per message for the garbage collector to
    # walk until the batch lands. The message keeps what Batch reads of them instead: one shared
    # list (the batch reads a message again when it is split or rebuilt without duplicates).
    msg.set_headers(_MAY_REPEAT_ONLY if found else None)
    return found


class Batch:
    """Aggregates of one micro-batch, plus its dead letters and the next offset of each partition.

    It keeps its messages too: if Postgres refuses the batch for its data, the writer splits it
    (`halves`) until the one message at fault is alone and can be filed as a dead letter.

    It promises that `add` never raises on account of a message (a bad one becomes a dead letter)
    and that rebuilding it from its messages (`halves`, `deduplicated`, `refused`) gives the same
    offsets. It is pure: no I/O, no clock but `wall_clock`. It is not thread-safe and not for
    reuse after it was handed to the writer."""

    def __init__(
        self,
        events_topic: str,
        profiles_topic: str,
        max_event_bytes: int,
        max_future_skew: dt.timedelta = DEFAULT_MAX_FUTURE_SKEW,
        wall_clock: float | None = None,
        dedup_window: float = 0,
    ) -> None:
        self.events_topic = events_topic
        self.profiles_topic = profiles_topic
        self.max_event_bytes = max_event_bytes
        self.max_future_skew = max_future_skew
        # The time messages without a broker timestamp are checked against; fixed for the batch so
        # that a batch split in halves judges each message as the whole batch did.
        self.wall_clock = wall_clock
        self.user_events: dict[tuple[int, str], UserEventRow] = {}
        # key (minute as epoch minutes, event_type); see minute_rows()
        self.minutes: dict[tuple[int, str], MinuteRow] = {}
        self.sessions: dict[tuple[uuid.UUID, int], SessionRow] = {}
        self.users: dict[int, UserProfile] = {}
        self.dead_letters: list[DeadLetter] = []
        self.next_offsets: dict[PartitionKey, int] = {}
        self.messages: list[KafkaMessage] = []
        self.events = 0
        # CONSUMER_DEDUP_WINDOW_SECONDS: a user's event_id is counted once within this many seconds
        # (0: off). The batch counts each (user_id, event_id) once and collects them; at commit, keys
        # Postgres has already seen within the window (streaming.event_ids) make it rebuild itself
        # without them (deduplicated()).
        self.dedup_window = dedup_window
        self.event_ids: set[EventKey] | None = set() if dedup_window > 0 else None
        # The same keys in the order first counted (what the writer records), with their events'
        # occurred_at in epoch seconds (a copy is looked up in the window's older generation only
        # when it is not newer than that generation's newest: store.record_event_ids).
        self.id_keys: list[EventKey] = []
        self.id_times: list[float] = []
        self.known_ids: frozenset[EventKey] = frozenset()
        self.duplicates = 0
        # Deleting users (store.py, "Deleting users"): the deleted users this batch drops the
        # events and profiles of (`forgotten`), how many it dropped, and the tombstones it holds
        # (user_id -> the latest one's append time in epoch ms), which delete their user when the
        # batch is written.
        self.deleted: DeletedUsers = NOBODY
        self.suppressed = 0
        self.tombstones: dict[int, int] = {}
        # A batch `refused` made (its one message filed as refused by Postgres): its (error, bare).
        self.refusal: tuple[str, bool] | None = None
        # Product analytics (store.write_product_tables): every counted event, in order, as four
        # parallel lists (streaming.event_log's columns; four appends cost less than a tuple kept per
        # event), and the latest time each (anonymous user_id, identified_user_id) pair was identified.
        self.log_users: list[int] = []
        self.log_times: list[dt.datetime] = []
        self.log_types: list[str] = []
        self.log_pages: list[str | None] = []
        self.identities: dict[tuple[int, int], dt.datetime] = {}

    def __len__(self) -> int:
        return len(self.messages)

    @classmethod
    def for_settings(cls, settings: Settings) -> Batch:
        """An empty batch with the consumer's bounds and event-id window, as .env sets them."""
        return cls(
            settings.kafka_topic,
            settings.kafka_profiles_topic,
            settings.consumer_max_event_bytes,
            dt.timedelta(seconds=settings.consumer_max_future_skew),
            dedup_window=settings.consumer_dedup_window_seconds,
        )

    def _empty_like(self) -> Batch:
        batch = Batch(
            self.events_topic,
            self.profiles_topic,
            self.max_event_bytes,
            self.max_future_skew,
            self.wall_clock,
            self.dedup_window,
        )
        batch.deleted = self.deleted
        return batch

    def without_deleted(self, deleted: DeletedUsers) -> Batch:
        """This batch's messages again, dropping the events and profiles of `deleted` (a deletion
        committed since the batch was aggregated, or one of its own tombstones): the same offsets,
        dead letters and tombstones."""
        if self.refusal:  # its one message is filed as a dead letter whoever its user is
            batch = self.refused(*self.refusal)
            batch.deleted = deleted
            return batch
        batch = self._empty_like()
        batch.deleted = deleted
        batch.known_ids = self.known_ids
        batch.add(self.messages)
        return batch

    def deduplicated(self, known: set[EventKey]) -> Batch:
        """This batch's messages again, without the events whose (user_id, event_id) are in `known`
        (counted by an earlier batch within the window): the same offsets and dead letters, fewer events."""
        batch = self._empty_like()
        batch.known_ids = frozenset(known)
        batch.add(self.messages)
        return batch

    def halves(self) -> tuple[Batch, Batch]:
        """This batch's messages in two batches, in order: the first holds a prefix of every partition."""
        middle = len(self.messages) // 2
        first, second = self._empty_like(), self._empty_like()
        first.add(self.messages[:middle])
        second.add(self.messages[middle:])
        return first, second

    def refused(self, error: str, bare: bool = False) -> Batch:
        """This one-message batch as a batch that files its message as a dead letter instead;
        `bare`: without its key and raw value, the error in ASCII (for when Postgres refuses those)."""
        [msg] = self.messages
        batch = self._empty_like()
        batch.refusal = (error, bare)
        batch.messages.append(msg)
        batch.next_offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        batch.dead_letter(msg, Reason.REFUSED_BY_POSTGRES, error)
        if bare:
            d = batch.dead_letters[0]
            batch.dead_letters[0] = dataclasses.replace(
                d,
                key=None,
                raw_value=None,
                raw_value_exact=False,
                error=error.encode("ascii", "backslashreplace").decode(),
            )
        return batch

    def add(self, messages: Sequence[KafkaMessage]) -> None:
        """Adds Kafka messages (no error messages) in their partition order."""
        events_topic, max_bytes = self.events_topic, self.max_event_bytes
        user_events, minutes, sessions = self.user_events, self.minutes, self.sessions
        next_offsets = self.next_offsets
        skew = self.max_future_skew.total_seconds()
        if self.wall_clock is None:
            self.wall_clock = time.time()
        wall_latest = self.wall_clock + skew
        ids, known, id_keys, id_times = self.event_ids, self.known_ids, self.id_keys, self.id_times
        deleted = self.deleted
        log_users, log_times, log_types, log_pages = self.log_users, self.log_times, self.log_types, self.log_pages
        self.messages.extend(messages)
        for msg in messages:
            topic = msg.topic()
            next_offsets[(topic, msg.partition())] = msg.offset() + 1
            # Everything that can fail on account of this message happens before any aggregate changes.
            try:
                kind, ms = msg.timestamp()
                latest = ms / 1000 + skew if kind == LOG_APPEND_TIME else wall_latest
                if topic != events_topic:
                    self._add_profile(msg, latest)
                    continue
                event, ts = decode_event(msg.value(), max_bytes, latest)
                if msg.key() != str(event.user_id).encode():
                    raise InvalidMessage(
                        Reason.KEY_MISMATCH, f"key {_text(msg.key(), 64)!r} is not the event's user_id {event.user_id}"
                    )
                at = event.occurred_at
                etype = event.event_type
                purchase = etype == "purchase"
                cents = amount_cents(event.amount) if purchase else 0
                minute = int(ts // 60)  # 3x cheaper than datetime.replace(second=0, ...)
                # Only events that may arrive twice (MAY_REPEAT_HEADER: the collector's) are checked and recorded.
                may_repeat = ids is not None and _may_repeat(msg)
            except InvalidMessage as exc:
                self.dead_letter(msg, exc.reason, str(exc))
                continue
            except Exception as exc:  # a bug of ours must cost this message, not the pipeline
                log.exception("failed on %s[%d]@%d; filing it as a dead letter", topic, msg.partition(), msg.offset())
                self.dead_letter(msg, Reason.INTERNAL_ERROR, f"consumer error: {type(exc).__name__}: {exc}")
                continue
            uid = event.user_id
            if (
                deleted
                and (uid in deleted or event.identified_user_id in deleted)
                and self._drops(msg, uid, event.identified_user_id)
            ):
                continue
            if may_repeat and ids is not None:
                id_key = uid << USER_SHIFT | event.event_id.int  # event_key(), inline
                seen = len(ids)
                ids.add(id_key)
                if len(ids) == seen or (known and id_key in known):
                    self.duplicates += 1  # a client's retry: counted the first time only
                    continue
                id_keys.append(id_key)
                id_times.append(ts)
            self.events += 1
            log_users.append(uid)
            log_times.append(at)
            log_types.append(etype)
            log_pages.append(event.page)
            if etype == IDENTIFY:
                self._identify(uid, event.identified_user_id, at)

            row = user_events.get((uid, etype))
            if row is None:
                user_events[(uid, etype)] = UserEventRow(1, at, at)
            else:
                row.events += 1
                if at < row.first_at:
                    row.first_at = at
                elif at > row.last_at:
                    row.last_at = at

            mrow = minutes.get((minute, etype))
            if mrow is None:
                minutes[(minute, etype)] = MinuteRow(1, cents)
            else:
                mrow.events += 1
                mrow.revenue_cents += cents

            srow = sessions.get((event.session_id, uid))
            if srow is None:
                sessions[(event.session_id, uid)] = SessionRow(
                    at,
                    at,
                    1,
                    int(purchase),
                    cents,
                    event.page,
                    event.referrer,
                    event.utm_source,
                    event.utm_medium,
                    event.utm_campaign,
                )
            else:
                if at < srow.first_at:
                    srow.first_at = at
                    srow.landing_page, srow.referrer = event.page, event.referrer
                    srow.utm_source, srow.utm_medium, srow.utm_campaign = (
                        event.utm_source,
                        event.utm_medium,
                        event.utm_campaign,
                    )
                elif at > srow.last_at:
                    srow.last_at = at
                srow.events += 1
                srow.purchases += purchase
                srow.revenue_cents += cents

    def _identify(self, anonymous_id: int, user_id: int | None, at: dt.datetime) -> None:
        """An identify event: the pair keeps its latest time (the contract sets user_id on identify)."""
        if user_id is None:
            return
        pair = (anonymous_id, user_id)
        known = self.identities.get(pair)
        if known is None or at > known:
            self.identities[pair] = at

    def last_seen(self) -> dict[int, dt.datetime]:
        """Each user's latest occurred_at in the batch (streaming.user_last_seen), from user_events'
        rows: nothing kept per event for it."""
        seen: dict[int, dt.datetime] = {}
        for (user_id, _), row in self.user_events.items():
            at = seen.get(user_id)
            if at is None or row.last_at > at:
                seen[user_id] = row.last_at
        return seen

    def minute_rows(self) -> list[tuple[dt.datetime, str, int, int]]:
        """The per-minute aggregates as (minute start in UTC, event_type, count, revenue in cents)."""
        return [
            (dt.datetime.fromtimestamp(m * 60, dt.UTC), e, row.events, row.revenue_cents)
            for (m, e), row in self.minutes.items()
        ]

    def _drops(self, msg: KafkaMessage, user_id: int, other: int | None = None) -> bool:
        """Whether the message of `user_id` (an identify event: naming `other`) is dropped as a
        deleted user's (`forgotten`); counted in `suppressed` if so. Called for a deleted user's messages only."""
        deleted = self.deleted
        kind, ms = msg.timestamp()
        if forgotten(deleted.get(user_id), kind, ms) or (other is not None and forgotten(deleted.get(other), kind, ms)):
            self.suppressed += 1
            return True
        return False

    def _tombstone(self, msg: KafkaMessage) -> None:
        """A null value on user_profiles: its key's user is deleted when the batch is written
        (store.py, "Deleting users"). A key that is not a user id leaves nothing to delete: a dead letter."""
        key = msg.key()
        # the key as an event's user_id would be written: 1 to BIGINT_MAX in decimal, no sign or leading zero
        if key is None or not key.isdigit() or key.startswith(b"0") or len(key) > 19 or int(key) > BIGINT_MAX:
            raise InvalidMessage(
                Reason.NULL_VALUE, f"tombstone (null value) whose key {_text(key, 64)!r} is not a user id"
            )
        user_id = int(key)
        kind, ms = msg.timestamp()
        if kind != LOG_APPEND_TIME or ms < 0:  # not stamped by the broker: when the batch began
            ms = int((self.wall_clock or time.time()) * 1000)
        if ms > self.tombstones.get(user_id, -1):
            self.tombstones[user_id] = ms

    def _add_profile(self, msg: KafkaMessage, latest: float) -> None:
        if msg.topic() != self.profiles_topic:
            raise InvalidMessage(Reason.UNEXPECTED_TOPIC, f"unexpected topic {msg.topic()!r}")
        if msg.value() is None:
            self._tombstone(msg)
            return
        profile = decode_profile(msg.value(), self.max_event_bytes, latest)
        if msg.key() != str(profile.user_id).encode():
            raise InvalidMessage(
                Reason.KEY_MISMATCH, f"key {_text(msg.key(), 64)!r} is not the profile's user_id {profile.user_id}"
            )
        if self.deleted and self._drops(msg, profile.user_id):
            return
        current = self.users.get(profile.user_id)
        # Last write wins by updated_at, never by arrival order; a tie keeps the later message.
        if current is None or profile.updated_at >= current.updated_at:
            self.users[profile.user_id] = profile

    def dead_letter(self, msg: KafkaMessage, reason: Reason, error: str) -> None:
        value = msg.value()
        if value is not None and len(value) > self.max_event_bytes:
            error += f" (raw_value keeps the first {self.max_event_bytes} bytes)"
        self.dead_letters.append(
            DeadLetter(
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                key=_text(msg.key(), 256),
                raw_value=_text(value, self.max_event_bytes),
                reason=reason,
                error=error,
                kafka_timestamp=append_time(msg),
                raw_value_exact=_exact(value, self.max_event_bytes),
            )
        )
