"""The Postgres side: one transaction per batch, fenced by the offsets it started from."""

from __future__ import annotations

import logging

import psycopg

from stream_consumer.batch import Batch, TopicPartition

log = logging.getLogger(__name__)


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

UPSERT_USER_EVENTS = """
INSERT INTO streaming.user_events AS t (user_id, event_type, event_count, created_at, updated_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[], %s::timestamptz[])
ON CONFLICT (user_id, event_type) DO UPDATE SET
    event_count = t.event_count + excluded.event_count,
    created_at = least(t.created_at, excluded.created_at),
    updated_at = greatest(t.updated_at, excluded.updated_at)
"""

# Revenue travels in cents as numeric: a batch's sum of cents is not bounded by bigint.
UPSERT_MINUTES = """
INSERT INTO streaming.event_minutes AS t (minute, event_type, event_count, revenue)
SELECT m, e, c, r / 100 FROM unnest(%s::timestamptz[], %s::text[], %s::bigint[], %s::numeric[]) AS v(m, e, c, r)
ON CONFLICT (minute, event_type) DO UPDATE SET
    event_count = t.event_count + excluded.event_count,
    revenue = t.revenue + excluded.revenue
"""

UPSERT_SESSIONS = """
INSERT INTO streaming.sessions AS t
    (session_id, user_id, first_event_at, last_event_at, event_count, purchase_count, revenue)
SELECT s, u, f, l, c, p, r / 100
FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::bigint[], %s::bigint[], %s::numeric[])
     AS v(s, u, f, l, c, p, r)
ON CONFLICT (session_id, user_id) DO UPDATE SET
    first_event_at = least(t.first_event_at, excluded.first_event_at),
    last_event_at = greatest(t.last_event_at, excluded.last_event_at),
    event_count = t.event_count + excluded.event_count,
    purchase_count = t.purchase_count + excluded.purchase_count,
    revenue = t.revenue + excluded.revenue,
    written_xid = pg_current_xact_id()
"""

UPSERT_USERS = """
INSERT INTO streaming.users AS t (user_id, name, email, country, signup_date, plan, updated_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::date[], %s::text[], %s::timestamptz[])
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

# An event_id seen within the window is a duplicate. The batch's ids are inserted (or, seen only
# longer ago than the window, stamped again), and the statement answers with the ids it could not
# record: the duplicates, usually none (the set difference is Postgres', not 50,000 ids sent back).
# Sorted ids: two members inserting overlapping ids lock them in the same order.
RECORD_EVENT_IDS = """
WITH batch AS (
    SELECT unnest(%s::uuid[]) AS id
), recorded AS (
    INSERT INTO streaming.event_ids AS t (event_id, seen_at)
    SELECT id, clock_timestamp() FROM batch
    ON CONFLICT (event_id) DO UPDATE SET seen_at = excluded.seen_at
    WHERE t.seen_at < excluded.seen_at - make_interval(secs => %s)
    RETURNING event_id
)
SELECT id FROM batch EXCEPT SELECT event_id FROM recorded
"""

# A replay starts from nothing: the ids of what it replays are forgotten with the aggregates.
AGGREGATE_TABLES = ("user_events", "event_minutes", "sessions", "users", "dead_letter_events", "event_ids")


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

    def connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=False)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def load_offsets(
        self, partitions: list[TopicPartition], new_start: dict[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, int]:
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
        self, batch: Batch, start_offsets: dict[TopicPartition, int], end_offsets: dict[TopicPartition, int]
    ) -> Batch:
        """Writes the batch and advances its partitions' offsets from `start_offsets` to the batch's
        next offsets, in one transaction, or raises Fenced. `end_offsets` (the partitions' high
        watermarks as last seen) are stored beside them for lag. Returns the batch as written:
        without the events counted before within the dedup window."""
        conn = self.connection()
        keys = list(batch.next_offsets)
        with conn.transaction(), conn.cursor() as cur:
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
            return write_aggregates(cur, batch)

    def reset(self, start_offsets: dict[TopicPartition, int]) -> None:
        """Empties every aggregate and moves this group's offsets to `start_offsets` (the start of
        each partition's log), in one transaction.

        Running members then fail the fence on their next batch and resume from there."""
        conn = self.connection()
        with conn.transaction():
            conn.execute("TRUNCATE " + ", ".join(f"streaming.{t}" for t in AGGREGATE_TABLES))
            conn.execute("DELETE FROM streaming.consumer_offsets WHERE consumer_group = %s", (self.group,))
            self._insert_offsets(conn, start_offsets)

    def set_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        """Moves these partitions' stored offsets (`offsets reset`), aggregates untouched."""
        conn = self.connection()
        with conn.transaction():
            self._insert_offsets(conn, offsets)

    def _insert_offsets(self, conn: psycopg.Connection, offsets: dict[TopicPartition, int]) -> None:
        conn.execute(
            """INSERT INTO streaming.consumer_offsets (consumer_group, topic, "partition", next_offset)
               SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(t, p, o)
               ON CONFLICT (consumer_group, topic, "partition") DO UPDATE
               SET next_offset = excluded.next_offset, high_watermark = NULL, updated_at = clock_timestamp()""",
            (self.group, [t for t, _ in offsets], [p for _, p in offsets], list(offsets.values())),
        )

    def stored_offsets(self) -> dict[TopicPartition, int]:
        conn = self.connection()
        with conn.transaction():
            rows = conn.execute(
                'SELECT topic, "partition", next_offset FROM streaming.consumer_offsets WHERE consumer_group = %s',
                (self.group,),
            ).fetchall()
        return {(t, p): off for t, p, off in rows}


def write_aggregates(cur: psycopg.Cursor, batch: Batch) -> Batch:
    """Adds the batch's aggregates, profiles and dead letters (the offsets are the caller's:
    Store.commit); with a dedup window, without the events whose ids were counted before within
    it. Returns the batch as written."""
    if batch.event_ids:
        ids = sorted(batch.event_ids)
        cur.execute(RECORD_EVENT_IDS, (ids, batch.dedup_window))
        seen = {row[0] for row in cur.fetchall()}
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
    return batch


def purge_event_ids(dsn: str, window_seconds: float, chunk: int = 50_000) -> int:
    """Forgets the event ids seen longer ago than the dedup window, a bounded chunk per transaction
    (streaming.event_ids stays at about rate x window rows). Returns how many went."""
    deleted = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            cur = conn.execute(
                """DELETE FROM streaming.event_ids WHERE event_id IN (
                       SELECT event_id FROM streaming.event_ids
                       WHERE seen_at < clock_timestamp() - make_interval(secs => %s) LIMIT %s)""",
                (window_seconds, chunk),
            )
            deleted += cur.rowcount
            if cur.rowcount < chunk:
                return deleted
