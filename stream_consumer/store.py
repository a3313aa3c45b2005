"""The Postgres side: one transaction per batch, fenced by the offsets it started from."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
import struct
import urllib.parse
import uuid
from collections.abc import Iterable

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Dumper

from stream_consumer.batch import NOBODY, USER_SHIFT, Batch, DeletedUsers, EventKey, PartitionKey, SessionRow, event_key

log = logging.getLogger(__name__)

#: dead letters deleted per transaction by the retention and `dead-letters purge`
PURGE_CHUNK = 10_000


def is_data_error(exc: BaseException) -> bool:
    """True when Postgres refused a value (class 22 or 23), not the connection or the schema."""
    if not isinstance(exc, psycopg.Error):
        return False
    if exc.sqlstate:
        return exc.sqlstate[:2] in ("22", "23")
    # Raised before the server saw anything: a value psycopg could not convert.
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Fenced(Exception):
    """Stored offsets moved since this consumer read them: another member owns the partition now
    (or a rebuild or an offsets reset moved them). The batch was rolled back; resume from the
    stored offsets."""


# The fence: each partition's row moves only from the offset this batch started at. A member that
# lost a partition still holds the old offset, so its update matches no row and its batch rolls
# back. Row locks serialise two writers of one partition; the loser re-checks and finds it moved.
ADVANCE_OFFSETS = """
UPDATE streaming.consumer_offsets AS o
SET next_offset = v.next_offset, high_watermark = v.high_watermark, updated_at = clock_timestamp()
FROM unnest(%(topics)s::text[], %(partitions)s::int[], %(start)s::bigint[],
            %(next)s::bigint[], %(end)s::bigint[])
     AS v(topic, "partition", start_offset, next_offset, high_watermark)
WHERE o.consumer_group = %(group)s AND o.topic = v.topic AND o."partition" = v."partition"
  AND o.next_offset = v.start_offset
"""

# Timestamps (and sessions' uuids) as binary arrays (%b): psycopg's text form of an aware datetime
# costs ten times more to dump (docs/benchmarks.md, "Consumer: the product-analytics tables").
UPSERT_USER_EVENTS = """
INSERT INTO streaming.user_events AS t (user_id, event_type, event_count, created_at, updated_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %b::timestamptz[], %b::timestamptz[])
ON CONFLICT (user_id, event_type) DO UPDATE SET
    event_count = t.event_count + excluded.event_count,
    created_at = least(t.created_at, excluded.created_at),
    updated_at = greatest(t.updated_at, excluded.updated_at)
"""

# Revenue travels in cents as numeric: a batch's sum of cents is not bounded by bigint. The one
# table every member of the group writes the same rows of (the others' rows are a user's, and a
# partition holds its users): rows in the key's order, so that two members lock the minutes they
# share in the same order and wait for each other instead of deadlocking.
UPSERT_MINUTES = """
INSERT INTO streaming.event_minutes AS t (minute, event_type, event_count, revenue)
SELECT m, e, c, r / 100 FROM unnest(%b::timestamptz[], %s::text[], %s::bigint[], %s::numeric[]) AS v(m, e, c, r)
ORDER BY m, e
ON CONFLICT (minute, event_type) DO UPDATE SET
    event_count = t.event_count + excluded.event_count,
    revenue = t.revenue + excluded.revenue
"""

# First touch (landing_page .. utm_campaign): of the earlier of the row's and the batch's earliest
# events, all five together. SET reads the row as it was, so the CASEs see the old first_event_at.
UPSERT_SESSIONS = """
INSERT INTO streaming.sessions AS t
    (session_id, user_id, first_event_at, last_event_at, event_count, purchase_count, revenue,
     landing_page, referrer_host, utm_source, utm_medium, utm_campaign)
SELECT s, u, f, l, c, p, r / 100, lp, rh, us, um, uc
FROM unnest(%b::uuid[], %s::bigint[], %b::timestamptz[], %b::timestamptz[], %s::bigint[], %s::bigint[], %s::numeric[],
            %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
     AS v(s, u, f, l, c, p, r, lp, rh, us, um, uc)
ON CONFLICT (session_id, user_id) DO UPDATE SET
    first_event_at = least(t.first_event_at, excluded.first_event_at),
    last_event_at = greatest(t.last_event_at, excluded.last_event_at),
    event_count = t.event_count + excluded.event_count,
    purchase_count = t.purchase_count + excluded.purchase_count,
    revenue = t.revenue + excluded.revenue,
    written_xid = pg_current_xact_id(),
    landing_page = CASE WHEN excluded.first_event_at < t.first_event_at
        THEN excluded.landing_page ELSE t.landing_page END,
    referrer_host = CASE WHEN excluded.first_event_at < t.first_event_at
        THEN excluded.referrer_host ELSE t.referrer_host END,
    utm_source = CASE WHEN excluded.first_event_at < t.first_event_at
        THEN excluded.utm_source ELSE t.utm_source END,
    utm_medium = CASE WHEN excluded.first_event_at < t.first_event_at
        THEN excluded.utm_medium ELSE t.utm_medium END,
    utm_campaign = CASE WHEN excluded.first_event_at < t.first_event_at
        THEN excluded.utm_campaign ELSE t.utm_campaign END
"""

UPSERT_USERS = """
INSERT INTO streaming.users AS t (user_id, name, email, country, signup_date, plan, updated_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::date[], %s::text[], %b::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
    name = excluded.name, email = excluded.email, country = excluded.country,
    signup_date = excluded.signup_date, plan = excluded.plan, updated_at = excluded.updated_at
WHERE t.updated_at <= excluded.updated_at
"""

# A message can be filed twice only if its offsets were rewound by hand (`offsets reset`) or its
# topic was recreated: the newer filing replaces the older, and nothing is lost or doubled.
INSERT_DEAD_LETTERS = """
INSERT INTO streaming.dead_letter_events
    (topic, "partition", "offset", message_key, raw_value, reason, error, kafka_timestamp, raw_value_exact)
SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::timestamptz[], %s::boolean[])
ON CONFLICT (topic, "partition", "offset") DO UPDATE SET
    message_key = excluded.message_key, raw_value = excluded.raw_value, reason = excluded.reason,
    error = excluded.error, kafka_timestamp = excluded.kafka_timestamp,
    raw_value_exact = excluded.raw_value_exact, received_at = clock_timestamp()
"""

# The dedup window (streaming.sql): a (user_id, event_id) seen within it is a duplicate. Two slots,
# streaming.event_ids_0 and _1; a batch reads which one is current with a ROW SHARE lock on
# streaming.event_id_generation, held to its commit: a rotation (rotate_event_ids, EXCLUSIVE) waits
# for the batches in flight and the next ones wait for it, so no batch sees a slot emptied or
# swapped under it.
CURRENT_SLOT = """SELECT slot, extract(epoch FROM other_newest)::float8 FROM streaming.event_id_generation FOR SHARE"""
# Each batch that records ids says into which slot and how new the newest of them is: at the
# rotation, the slot's newest becomes the bound past which copies skip the look-up (other_newest).
# A millisecond later than the newest: timestamptz keeps microseconds, a float may round down.
RECORD_SPAN = """INSERT INTO streaming.event_id_spans (slot, newest_at)
VALUES (%s, to_timestamp(%s) + interval '1 millisecond')"""

# Fast path, two statements. First, which of the batch's keys the other slot (the generation
# before) holds: the duplicates, usually none. Only keys whose event is not newer than the newest
# event of that slot are looked up (other_newest): a copy of an event carries the event's
# occurred_at, so a newer one cannot be a copy of an event there. The others, every event that
# arrives in time after a rotation, skip the look-up. The look-up is a scalar subquery, one index probe per key, so
# that no estimate turns it into a join that reads the whole slot. Parameters in binary (%b):
# psycopg's text form of a uuid costs 6x more.
SEEN_BEFORE = """
SELECT b.user_id, b.event_id FROM unnest(%(users)b::bigint[], %(ids)b::uuid[]) AS b(user_id, event_id)
WHERE (SELECT true FROM streaming.{other} o WHERE o.user_id = b.user_id AND o.event_id = b.event_id)
"""
# Then the others are copied into the current slot (COPY ... FORMAT binary, rows in the index's
# order: copy_rows): COPY inserts a page of rows at a time where INSERT ... SELECT inserts each, and
# its unique index is the check within the current slot. A key the current slot already holds (a
# retry within the generation) fails the COPY with a unique violation: the batch then takes the
# careful path below.
COPY_KEYS = "COPY streaming.{current} (user_id, event_id) FROM STDIN (FORMAT binary)"

# Careful path: ON CONFLICT skips the keys the current slot holds (also a key another member
# inserts at the same time: it waits for that member's commit). Sorted: two members inserting
# overlapping keys lock them in the same order.
RECORD_KEYS = """
WITH batch AS (
    SELECT * FROM unnest(%(users)b::bigint[], %(ids)b::uuid[]) AS b(user_id, event_id)
), recorded AS (
    INSERT INTO streaming.{current} (slot, user_id, event_id)
    SELECT %(slot)s, user_id, event_id FROM batch b
    WHERE (SELECT true FROM streaming.{other} o WHERE o.user_id = b.user_id AND o.event_id = b.event_id) IS NULL
    ORDER BY user_id, event_id
    ON CONFLICT DO NOTHING
    RETURNING user_id, event_id
)
SELECT user_id, event_id FROM batch EXCEPT ALL SELECT user_id, event_id FROM recorded
"""

#: After a batch took the careful path, the next ones take it at once: copies come in bursts.
CAREFUL_BATCHES = 20


@dataclasses.dataclass
class Window:
    """The dedup window's path for the next batches: `careful` more take the careful path."""

    careful: int = 0


class Int8Array(bytes):
    """A one-dimensional bigint[] without nulls, already in Postgres' binary wire format. The dedup
    window sends one user id and one UUID per key it looks up: psycopg's list dumper calls a Python
    dumper per element, key_arrays builds each array in one pass."""


class UuidArray(bytes):
    """A one-dimensional uuid[] without nulls, in the binary wire format (as Int8Array)."""


class _Int8ArrayDumper(Dumper):
    format = pq.Format.BINARY
    oid = 1016  # bigint[]

    def dump(self, obj: bytes) -> bytes:
        return obj


class _UuidArrayDumper(_Int8ArrayDumper):
    oid = 2951  # uuid[]


psycopg.adapters.register_dumper(Int8Array, _Int8ArrayDumper)
psycopg.adapters.register_dumper(UuidArray, _UuidArrayDumper)

# ndim, has nulls, element oid, length, lower bound; each element is its length and its bytes
_ARRAY_HEADER = struct.Struct(">iiIii")
_ID_MASK = (1 << 128) - 1
# COPY's binary format: signature, flags, header extension; each row: its field count, then each
# field's length and bytes; the trailer. A row of (user_id, event_id) is 34 bytes: 2, 8, user_id,
# 16, event_id, all big-endian: the key (batch.event_key) ORed with the row's constant words.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_ROW_WORDS = 2 << 256 | 8 << 224 | 16 << 128


def key_arrays(keys: Iterable[EventKey]) -> tuple[Int8Array, UuidArray]:
    """The user ids and event ids of dedup-window keys (batch.event_key) as bigint[] and uuid[]. An
    element is its length (4 bytes) then its value, big-endian: one int.to_bytes each, the length
    put above the value's bits."""
    keys = list(keys)
    n = len(keys)
    users = b"".join((8 << 64 | k >> USER_SHIFT).to_bytes(12, "big") for k in keys)
    ids = b"".join((16 << 128 | k & _ID_MASK).to_bytes(20, "big") for k in keys)
    return (
        Int8Array(_ARRAY_HEADER.pack(1, 0, 20, n, 1) + users),
        UuidArray(_ARRAY_HEADER.pack(1, 0, 2950, n, 1) + ids),
    )


def copy_rows(keys: Iterable[EventKey]) -> bytes:
    """The keys as COPY ... (user_id, event_id) FROM STDIN (FORMAT binary) data."""
    return b"".join((_COPY_HEADER, *((_ROW_WORDS | k).to_bytes(34, "big") for k in keys), _COPY_TRAILER))


def _keys(rows: Iterable[tuple[int, uuid.UUID]]) -> set[EventKey]:
    return {event_key(u, e) for u, e in rows}


def record_event_ids(cur: psycopg.Cursor, batch: Batch, window: Window) -> set[EventKey]:
    """Records the batch's keys in the dedup window, in the caller's transaction. Returns the keys
    seen before within the window."""
    if not batch.id_keys:
        return set()
    [(slot, other_newest)] = cur.execute(CURRENT_SLOT).fetchall()
    names = {"current": sql.Identifier(f"event_ids_{slot}"), "other": sql.Identifier(f"event_ids_{1 - slot}")}
    cur.execute(RECORD_SPAN, (slot, max(batch.id_times)))
    keys = sorted(batch.id_keys)  # the index's order: (user_id, event_id)
    if window.careful:
        window.careful -= 1
    else:
        seen: set[EventKey] = set()
        if other_newest is not None:
            old = [k for k, t in zip(batch.id_keys, batch.id_times) if t <= other_newest]
            if old:
                users, ids = key_arrays(old)
                seen = _keys(cur.execute(sql.SQL(SEEN_BEFORE).format(**names), {"users": users, "ids": ids}))
        data = copy_rows(k for k in keys if k not in seen) if seen else copy_rows(keys)
        try:
            with cur.connection.transaction():  # a savepoint: a unique violation undoes the COPY only
                with cur.copy(sql.SQL(COPY_KEYS).format(**names)) as copy:
                    copy.write(data)
            return seen
        except psycopg.errors.UniqueViolation:
            window.careful = CAREFUL_BATCHES
    users, ids = key_arrays(keys)
    cur.execute(sql.SQL(RECORD_KEYS).format(**names), {"users": users, "ids": ids, "slot": slot})
    return _keys(cur.fetchall())


# A replay starts from nothing: the ids of what it replays are forgotten with the aggregates.
AGGREGATE_TABLES = (
    "user_events",
    "event_minutes",
    "sessions",
    "users",
    "dead_letter_events",
    "event_ids",
    "event_id_spans",
    # product analytics; not streaming.deleted_users: a rebuild must not bring a deleted user back
    "event_log",
    "user_last_seen",
    "identities",
)


class Store:
    """The consumer group's side of Postgres: one connection (reopened when broken), the fenced
    commit of a batch with its offsets, the group's stored offsets, and the rebuild's reset.

    It promises that a batch's aggregates, dead letters, event ids and offsets land in one
    transaction or not at all, and only if no one moved the offsets since the batch began (else
    Fenced). It is not thread-safe: one writer thread uses it; purges and the CLI open their own
    connections."""

    def __init__(self, dsn: str, group: str) -> None:
        self.dsn = dsn
        self.group = group
        self.conn: psycopg.Connection | None = None
        self.window = Window()
        self.deletions = Deletions()

    def connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=False)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def load_offsets(
        self, partitions: list[PartitionKey], new_start: dict[PartitionKey, int] | None = None
    ) -> dict[PartitionKey, int]:
        """The stored next offset of each partition. A partition this group never read gets a row
        starting at `new_start` (the start of its log; 0 if not given)."""
        new_start = new_start or {}
        conn = self.connection()
        with conn.transaction():
            conn.execute(
                """INSERT INTO streaming.consumer_offsets (consumer_group, topic, "partition", next_offset)
                   SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(t, p, o)
                   ON CONFLICT DO NOTHING""",
                (
                    self.group,
                    [t for t, _ in partitions],
                    [p for _, p in partitions],
                    [new_start.get(k, 0) for k in partitions],
                ),
            )
            rows = conn.execute(
                """SELECT topic, "partition", next_offset FROM streaming.consumer_offsets o
                   JOIN unnest(%s::text[], %s::int[]) AS v(t, p) ON o.topic = v.t AND o."partition" = v.p
                   WHERE consumer_group = %s""",
                ([t for t, _ in partitions], [p for _, p in partitions], self.group),
            ).fetchall()
        return {(t, p): off for t, p, off in rows}

    def commit(
        self, batch: Batch, start_offsets: dict[PartitionKey, int], end_offsets: dict[PartitionKey, int]
    ) -> Batch:
        """Writes the batch and advances its partitions' offsets from `start_offsets` to the batch's
        next offsets, in one transaction, or raises Fenced. `end_offsets` (the partitions' high
        watermarks as last seen) are stored beside them for lag. Returns the batch as written:
        without the events counted before within the dedup window."""
        conn = self.connection()
        keys = list(batch.next_offsets)
        with conn.transaction(), conn.cursor() as cur:
            batch = self.deletions.prepare(cur, batch)
            cur.execute(
                ADVANCE_OFFSETS,
                {
                    "group": self.group,
                    "topics": [t for t, _ in keys],
                    "partitions": [p for _, p in keys],
                    "start": [start_offsets[k] for k in keys],
                    "next": [batch.next_offsets[k] for k in keys],
                    "end": [end_offsets.get(k) for k in keys],
                },
            )
            if cur.rowcount != len(keys):
                raise Fenced(f"{len(keys) - cur.rowcount} of {len(keys)} partitions moved on since this batch began")
            return write_aggregates(cur, batch, self.window)

    def reset(self, start_offsets: dict[PartitionKey, int]) -> None:
        """Empties every aggregate and moves this group's offsets to `start_offsets` (the start of
        each partition's log), in one transaction.

        Running members then fail the fence on their next batch and resume from there."""
        conn = self.connection()
        with conn.transaction():
            conn.execute("TRUNCATE " + ", ".join(f"streaming.{t}" for t in AGGREGATE_TABLES))
            conn.execute("UPDATE streaming.event_id_generation SET other_newest = NULL")  # no ids: no bound
            conn.execute("DELETE FROM streaming.consumer_offsets WHERE consumer_group = %s", (self.group,))
            self._insert_offsets(conn, start_offsets)

    def set_offsets(self, offsets: dict[PartitionKey, int]) -> None:
        """Moves these partitions' stored offsets (`offsets reset`), aggregates untouched."""
        conn = self.connection()
        with conn.transaction():
            self._insert_offsets(conn, offsets)

    def _insert_offsets(self, conn: psycopg.Connection, offsets: dict[PartitionKey, int]) -> None:
        conn.execute(
            """INSERT INTO streaming.consumer_offsets (consumer_group, topic, "partition", next_offset)
               SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(t, p, o)
               ON CONFLICT (consumer_group, topic, "partition") DO UPDATE
               SET next_offset = excluded.next_offset, high_watermark = NULL, updated_at = clock_timestamp()""",
            (self.group, [t for t, _ in offsets], [p for _, p in offsets], list(offsets.values())),
        )

    def stored_offsets(self) -> dict[PartitionKey, int]:
        conn = self.connection()
        with conn.transaction():
            rows = conn.execute(
                'SELECT topic, "partition", next_offset FROM streaming.consumer_offsets WHERE consumer_group = %s',
                (self.group,),
            ).fetchall()
        return {(t, p): off for t, p, off in rows}


def write_aggregates(cur: psycopg.Cursor, batch: Batch, window: Window | None = None) -> Batch:
    """Adds the batch's aggregates, profiles and dead letters (the offsets are the caller's:
    Store.commit); with a dedup window, without the events whose ids were counted before within
    it. Returns the batch as written."""
    if batch.event_ids:
        seen = record_event_ids(cur, batch, window or Window())
        if seen:
            batch = batch.deduplicated(seen)
    if batch.user_events:
        rows = batch.user_events.values()
        cur.execute(
            UPSERT_USER_EVENTS,
            (
                [u for u, _ in batch.user_events],
                [e for _, e in batch.user_events],
                [r.events for r in rows],
                [r.first_at for r in rows],
                [r.last_at for r in rows],
            ),
        )
    if batch.minutes:
        cur.execute(UPSERT_MINUTES, tuple(map(list, zip(*batch.minute_rows()))))
    if batch.sessions:
        srows = batch.sessions.values()
        cur.execute(
            UPSERT_SESSIONS,
            (
                [s for s, _ in batch.sessions],
                [u for _, u in batch.sessions],
                [r.first_at for r in srows],
                [r.last_at for r in srows],
                [r.events for r in srows],
                [r.purchases for r in srows],
                [r.revenue_cents for r in srows],
                *first_touch_columns(srows),
            ),
        )
    if batch.users:
        ps = batch.users.values()
        cur.execute(
            UPSERT_USERS,
            (
                [p.user_id for p in ps],
                [p.name for p in ps],
                [p.email for p in ps],
                [p.country for p in ps],
                [p.signup_date for p in ps],
                [p.plan for p in ps],
                [p.updated_at for p in ps],
            ),
        )
    if batch.dead_letters:
        d = batch.dead_letters
        cur.execute(
            INSERT_DEAD_LETTERS,
            (
                [x.topic for x in d],
                [x.partition for x in d],
                [x.offset for x in d],
                [x.key for x in d],
                [x.raw_value for x in d],
                [str(x.reason) for x in d],
                [x.error for x in d],
                [x.kafka_timestamp for x in d],
                [x.raw_value_exact for x in d],
            ),
        )
    write_product_tables(cur, batch)
    return batch


# --- Product analytics: streaming.event_log, user_last_seen, identities, sessions' first touch ---

# Every counted event, appended: COPY in binary (copy_event_log), written_xid by its default.
COPY_EVENT_LOG = "COPY streaming.event_log (user_id, occurred_at, event_type, page) FROM STDIN (FORMAT binary)"
EVENT_LOG_TYPES = ["int8", "timestamptz", "text", "text"]

# Only a later time updates a row: no dead row for a user whose batch holds nothing newer. Arrays
# in binary (%b): psycopg's text form of a timestamptz costs ten times more (docs/benchmarks.md).
UPSERT_LAST_SEEN = """
INSERT INTO streaming.user_last_seen AS t (user_id, last_seen_at)
SELECT * FROM unnest(%b::bigint[], %b::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET last_seen_at = excluded.last_seen_at
WHERE excluded.last_seen_at > t.last_seen_at
"""

# A pair keeps its latest identify time; written_xid moves only when that changes (the marts read
# the pairs written since their last build).
UPSERT_IDENTITIES = """
INSERT INTO streaming.identities AS t (anonymous_id, user_id, identified_at)
SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::timestamptz[])
ON CONFLICT (anonymous_id, user_id) DO UPDATE SET
    identified_at = excluded.identified_at, written_xid = pg_current_xact_id()
WHERE excluded.identified_at > t.identified_at
"""


def stored_text(text: str) -> str:
    """`text` as Postgres text can hold it: NUL (which the contract lets through in a page) written
    as the dead letters write it, `\\x00`."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def copy_event_log(cur: psycopg.Cursor, batch: Batch) -> None:
    """Appends the batch's counted events to streaming.event_log: COPY's binary rows, which psycopg
    formats in C (the cheapest way measured: docs/benchmarks.md). A page holding NUL, which Postgres
    text cannot hold, fails the COPY (22021) in its savepoint, and the rows are copied again with
    NUL escaped (stored_text): no per-row check on the way every batch takes."""
    try:
        with cur.connection.transaction(), cur.copy(COPY_EVENT_LOG) as copy:
            copy.set_types(EVENT_LOG_TYPES)
            write = copy.write_row
            for row in zip(batch.log_users, batch.log_times, batch.log_types, batch.log_pages):
                write(row)
    except psycopg.errors.CharacterNotInRepertoire:
        with cur.copy(COPY_EVENT_LOG) as copy:
            copy.set_types(EVENT_LOG_TYPES)
            pages = [None if page is None else stored_text(page) for page in batch.log_pages]
            for row in zip(batch.log_users, batch.log_times, batch.log_types, pages):
                copy.write_row(row)


_AUTHORITY = re.compile("[/?#]")


@functools.lru_cache(maxsize=4096)
def referrer_host(referrer: str) -> str | None:
    """The lowercase host of a referrer (the contract's absolute http(s) URL; no port, an IPv6
    address without its brackets). A host urllib refuses (a stray `[`: the contract lets RFC 3986's
    characters through) is kept as sent between `//` and the path, lowercased."""
    try:
        host = urllib.parse.urlsplit(referrer).hostname
    except ValueError:
        host = _AUTHORITY.split(referrer.partition("://")[2], 1)[0].lower()
    return host or None


def first_touch_columns(rows: Iterable[SessionRow]) -> tuple[list, ...]:
    """landing_page, referrer_host, utm_source, utm_medium, utm_campaign of each session row."""
    rows = list(rows)
    return (
        [None if r.landing_page is None else stored_text(r.landing_page) for r in rows],
        [None if r.referrer is None else referrer_host(r.referrer) for r in rows],
        [r.utm_source for r in rows],
        [r.utm_medium for r in rows],
        [r.utm_campaign for r in rows],
    )


def write_product_tables(cur: psycopg.Cursor, batch: Batch) -> None:
    """The batch's counted events into streaming.event_log, its users' latest event times into
    user_last_seen and its identify events into identities (sessions' first touch is in
    UPSERT_SESSIONS), in the caller's transaction."""
    if batch.log_users:
        copy_event_log(cur, batch)
        seen = batch.last_seen()
        cur.execute(UPSERT_LAST_SEEN, (list(seen), list(seen.values())))
    if batch.identities:
        pairs = batch.identities
        cur.execute(UPSERT_IDENTITIES, ([a for a, _ in pairs], [u for _, u in pairs], list(pairs.values())))


def rotate_event_ids(dsn: str, window_seconds: float) -> int:
    """Starts a new generation of the dedup window once the current one is `window_seconds` old:
    empties the other slot (the generation before the current, whose ids are now at least a window
    old) and makes it current. Returns how many ids were forgotten (0: not due yet).

    The rotation waits for the batches recording ids at the moment (its EXCLUSIVE lock on
    streaming.event_id_generation conflicts with their CURRENT_SLOT) and holds new ones until it
    commits: every batch sees both slots of one generation, never a slot emptied under it. TRUNCATE is logged and
    transactional, as the ids' inserts are: a crash keeps the window as it was committed."""
    due = """SELECT slot FROM streaming.event_id_generation
             WHERE started_at <= clock_timestamp() - make_interval(secs => %s)"""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(due, (window_seconds,)).fetchone()
        if row is None:
            return 0
        old = sql.Identifier(f"event_ids_{1 - row[0]}")
        # Counted before the lock: no batch inserts into the slot that is not current.
        [(forgotten,)] = conn.execute(sql.SQL("SELECT count(*) FROM streaming.{}").format(old)).fetchall()
        with conn.transaction():
            conn.execute("LOCK TABLE streaming.event_id_generation IN EXCLUSIVE MODE")
            again = conn.execute(due + " FOR UPDATE", (window_seconds,)).fetchone()
            if again != row:  # another member rotated meanwhile
                return 0
            conn.execute(sql.SQL("TRUNCATE streaming.{}").format(old))
            # the current slot becomes the other: its newest event bounds the look-ups of copies
            conn.execute(
                """UPDATE streaming.event_id_generation SET slot = 1 - slot, started_at = clock_timestamp(),
                   other_newest = (SELECT max(newest_at) FROM streaming.event_id_spans WHERE slot = %s)""",
                (row[0],),
            )
            conn.execute("DELETE FROM streaming.event_id_spans WHERE slot = %s", (1 - row[0],))
        return int(forgotten)


def purge_dead_letters(dsn: str, older_than_days: int, where: str = "TRUE", params: dict | None = None) -> int:
    """Deletes dead letters received more than `older_than_days` ago (and matching `where`, a
    condition with named parameters), a chunk per transaction: DEAD_LETTER_RETENTION_DAYS and the
    operator's `dead-letters purge`. Returns how many went."""
    deleted = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            n = conn.execute(
                f"""DELETE FROM streaming.dead_letter_events WHERE id IN (
                        SELECT id FROM streaming.dead_letter_events
                        WHERE received_at < clock_timestamp() - make_interval(days => %(days)s) AND {where}
                        LIMIT %(chunk)s)""",
                {**(params or {}), "days": older_than_days, "chunk": PURGE_CHUNK},
            ).rowcount
            deleted += n
            if n < PURGE_CHUNK:
                return deleted


# --- Deleting users ---------------------------------------------------------------------------
# `python -m stream_consumer users delete` (users.py) and a tombstone on user_profiles (in the
# batch's transaction: Deletions.prepare) delete users the same way: delete_users.

#: The pg_advisory_xact_lock key of deletions. Every batch's transaction takes it shared first
#: (exclusive if the batch holds a tombstone), `users delete` takes it exclusive: a batch commits
#: wholly before a deletion or wholly after it, and one after it has read the deletion first.
DELETION_LOCK = 0x64656C6574696F6E  # "deletion"

#: The columns of `streaming` that hold a user id, per table: user_id, anonymous_id and any
#: *_user_id of an integer type, in every table but deleted_users (a partitioned table as one: its
#: partitions are deleted from through it). Read from the catalog at each deletion, so a new table
#: with a user_id column is covered without a change here. The dead letters have no such column:
#: they go by message_key (delete_users).
USER_ID_COLUMNS = r"""
SELECT c.relname::text, array_agg(a.attname::text ORDER BY a.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'streaming' AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'deleted_users'
  AND a.atttypid IN ('bigint'::regtype, 'integer'::regtype, 'numeric'::regtype)
  AND (a.attname IN ('user_id', 'anonymous_id') OR a.attname LIKE '%\_user\_id')
GROUP BY c.relname ORDER BY c.relname
"""

# A later deletion moves deleted_at on; a plain one (or a tombstone) never lifts a suppression.
UPSERT_DELETED_USERS = """
INSERT INTO streaming.deleted_users AS d (user_id, deleted_at, suppress)
SELECT u, a, %(suppress)s FROM unnest(%(ids)s::bigint[], %(at)s::timestamptz[]) AS v(u, a)
ON CONFLICT (user_id) DO UPDATE SET
    deleted_at = greatest(d.deleted_at, excluded.deleted_at),
    suppress = d.suppress OR excluded.suppress,
    written_xid = pg_current_xact_id()
"""

# What a consumer checks in each batch's transaction (after the lock): whether deleted_users changed
# since it last read them. Every write of the table sets written_xid (UPSERT_DELETED_USERS).
DELETED_USERS_VERSION = """
SELECT count(*), (SELECT written_xid::text FROM streaming.deleted_users ORDER BY written_xid DESC LIMIT 1)
FROM streaming.deleted_users
"""
LOAD_DELETED_USERS = """
SELECT user_id, floor(extract(epoch FROM deleted_at) * 1000)::bigint, suppress FROM streaming.deleted_users
"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def epoch_ms(ms: int) -> dt.datetime:
    """Kafka's epoch milliseconds as an exact datetime (a float's division could round)."""
    return _EPOCH + dt.timedelta(milliseconds=ms)


def load_deleted_users(cur: psycopg.Cursor) -> DeletedUsers:
    return {u: (ms, suppress) for u, ms, suppress in cur.execute(LOAD_DELETED_USERS)} or NOBODY


@dataclasses.dataclass
class Deleted:
    """What delete_users did: the ids deleted (those asked for, and the anonymous ids identified
    as them) and the rows deleted per table."""

    asked: list[int]
    anonymous: list[int]
    rows: dict[str, int]


def delete_users(cur: psycopg.Cursor, deleted_at: dict[int, dt.datetime], suppress: bool) -> Deleted:
    """Deletes these users, in the caller's transaction (which holds DELETION_LOCK exclusive):
    records each in streaming.deleted_users (deleted_at, suppress), and deletes every row of theirs
    from every table of `streaming` that holds a user id (USER_ID_COLUMNS) and their dead letters
    (message_key = the id).

    A user's events include those of the anonymous ids ever identified as them (every pair of
    streaming.identities naming the user): those ids are deleted with them, as deleted users of
    their own with the user's deleted_at and suppress, so that neither their events nor their
    identify events come back."""
    asked = sorted(deleted_at)
    at = dict(deleted_at)
    anonymous = set()
    for anon, user in cur.execute(
        "SELECT anonymous_id, user_id FROM streaming.identities WHERE user_id = ANY(%s::bigint[])", (asked,)
    ).fetchall():
        if anon not in deleted_at:
            anonymous.add(anon)
            at[anon] = max(at.get(anon, deleted_at[user]), deleted_at[user])
    everyone = sorted(at)
    cur.execute(UPSERT_DELETED_USERS, {"ids": everyone, "at": [at[u] for u in everyone], "suppress": suppress})
    rows: dict[str, int] = {}
    for table, columns in cur.execute(USER_ID_COLUMNS).fetchall():
        match = sql.SQL(" OR ").join(sql.SQL("{} = ANY(%(ids)s::bigint[])").format(sql.Identifier(c)) for c in columns)
        query = sql.SQL("DELETE FROM streaming.{} WHERE ").format(sql.Identifier(table)) + match
        rows[table] = cur.execute(query, {"ids": everyone}).rowcount
    rows["dead_letter_events"] = cur.execute(
        "DELETE FROM streaming.dead_letter_events WHERE message_key = ANY(%s::text[])", ([str(u) for u in everyone],)
    ).rowcount
    return Deleted(asked, sorted(anonymous), rows)


class Deletions:
    """A consumer's copy of streaming.deleted_users, and what each batch's transaction does about
    them (`prepare`). Used by the writer thread; the consumer's thread reads `users` (replaced
    whole, never mutated) into each new batch, so that most batches are aggregated without the
    deleted users' events in the first place."""

    def __init__(self) -> None:
        self.users: DeletedUsers = NOBODY
        self.version: tuple | None = None  # DELETED_USERS_VERSION as last read; None: read again

    def prepare(self, cur: psycopg.Cursor, batch: Batch) -> Batch:
        """First thing in a batch's transaction: takes DELETION_LOCK (shared; exclusive if the
        batch holds a tombstone), reads deleted_users again if they changed, carries out the
        batch's tombstones that are new (a tombstone no later than its user's deleted_at was
        carried out before: a rebuild's replay, or the tombstone of `users delete`), and returns the
        batch as it must be written: aggregated again from its messages if it was aggregated
        without a deletion it must honour."""
        lock = "pg_advisory_xact_lock" if batch.tombstones else "pg_advisory_xact_lock_shared"
        cur.execute(f"SELECT {lock}(%s)", (DELETION_LOCK,))
        version = cur.execute(DELETED_USERS_VERSION).fetchone()
        if version != self.version:
            self.users, self.version = load_deleted_users(cur), version
        users = self.users
        new = {u: ms for u, ms in batch.tombstones.items() if u not in users or users[u][0] < ms}
        if new:
            done = delete_users(cur, {u: epoch_ms(ms) for u, ms in new.items()}, suppress=False)
            log.info(
                "tombstone: deleted user(s) %s%s: %s",
                ", ".join(map(str, done.asked)),
                f" and the anonymous ids identified as them, {', '.join(map(str, done.anonymous))}"
                if done.anonymous
                else "",
                ", ".join(f"{n} from {t}" for t, n in done.rows.items() if n) or "no rows",
            )
            users = load_deleted_users(cur)  # as this transaction leaves them
            self.version = None  # it may yet roll back: the next batch reads what was committed
        if batch.deleted is not users and batch.deleted != users:
            batch = batch.without_deleted(users)
        return batch
