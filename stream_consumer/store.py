"""The Postgres side: one transaction per batch, fenced by the offsets it started from."""

from __future__ import annotations

import logging

import psycopg

from stream_consumer.batch import Batch, TopicPartition

log = logging.getLogger(__name__)


class Fenced(Exception):
    """Stored offsets moved since this consumer read them: another member owns the partition now
    (or a rebuild reset it). The batch was rolled back; resume from the stored offsets."""


# The fence: each partition's row moves only from the offset this batch started at. A member that
# lost a partition still holds the old offset, so its update matches no row and its batch rolls
# back. Row locks serialise two writers of one partition; the loser re-checks and finds it moved.
ADVANCE_OFFSETS = """
UPDATE streaming.consumer_offsets AS o
SET next_offset = v.next_offset, high_watermark = v.high_watermark, updated_at = clock_timestamp()
FROM unnest(%(topics)s::text[], %(partitions)s::int[], %(expected)s::bigint[],
            %(next)s::bigint[], %(high)s::bigint[])
     AS v(topic, "partition", expected, next_offset, high_watermark)
WHERE o.consumer_group = %(group)s AND o.topic = v.topic AND o."partition" = v."partition"
  AND o.next_offset = v.expected
"""

UPSERT_USER_EVENTS = """
INSERT INTO streaming.user_events AS t (user_id, event_type, event_count, created_at, updated_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::timestamptz[], %s::timestamptz[])
ON CONFLICT (user_id, event_type) DO UPDATE SET
    event_count = t.event_count + excluded.event_count,
    created_at = least(t.created_at, excluded.created_at),
    updated_at = greatest(t.updated_at, excluded.updated_at)
"""

UPSERT_MINUTES = """
INSERT INTO streaming.event_minutes AS t (minute, event_type, event_count, revenue)
SELECT m, e, c, r::numeric / 100 FROM unnest(%s::timestamptz[], %s::text[], %s::bigint[], %s::bigint[]) AS v(m, e, c, r)
ON CONFLICT (minute, event_type) DO UPDATE SET
    event_count = t.event_count + excluded.event_count,
    revenue = t.revenue + excluded.revenue
"""

UPSERT_SESSIONS = """
INSERT INTO streaming.sessions AS t
    (session_id, user_id, first_event_at, last_event_at, event_count, purchase_count, revenue)
SELECT s, u, f, l, c, p, r::numeric / 100
FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::bigint[], %s::bigint[], %s::bigint[])
     AS v(s, u, f, l, c, p, r)
ON CONFLICT (session_id) DO UPDATE SET
    user_id = least(t.user_id, excluded.user_id),
    first_event_at = least(t.first_event_at, excluded.first_event_at),
    last_event_at = greatest(t.last_event_at, excluded.last_event_at),
    event_count = t.event_count + excluded.event_count,
    purchase_count = t.purchase_count + excluded.purchase_count,
    revenue = t.revenue + excluded.revenue
"""

UPSERT_USERS = """
INSERT INTO streaming.users AS t (user_id, name, email, country, signup_date, plan, updated_at)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::date[], %s::text[], %s::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
    name = excluded.name, email = excluded.email, country = excluded.country,
    signup_date = excluded.signup_date, plan = excluded.plan, updated_at = excluded.updated_at
WHERE t.updated_at <= excluded.updated_at
"""

INSERT_DEAD_LETTERS = """
INSERT INTO streaming.dead_letter_events (topic, "partition", "offset", message_key, raw_value, error)
SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[], %s::text[], %s::text[])
"""

AGGREGATE_TABLES = ("user_events", "event_minutes", "sessions", "users", "dead_letter_events")


class Store:
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

    def claim(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The stored next offset of each partition (0 for a partition never seen)."""
        conn = self.connection()
        with conn.transaction():
            topics = [t for t, _ in partitions]
            parts = [p for _, p in partitions]
            conn.execute(
                """INSERT INTO streaming.consumer_offsets (consumer_group, topic, "partition", next_offset)
                   SELECT %s, t, p, 0 FROM unnest(%s::text[], %s::int[]) AS v(t, p)
                   ON CONFLICT DO NOTHING""",
                (self.group, topics, parts),
            )
            rows = conn.execute(
                """SELECT topic, "partition", next_offset FROM streaming.consumer_offsets o
                   JOIN unnest(%s::text[], %s::int[]) AS v(t, p) ON o.topic = v.t AND o."partition" = v.p
                   WHERE consumer_group = %s""",
                (topics, parts, self.group),
            ).fetchall()
        return {(t, p): off for t, p, off in rows}

    def commit(self, batch: Batch, expected: dict[TopicPartition, int], high: dict[TopicPartition, int]) -> bool:
        """Writes the batch and advances its partitions' offsets in one transaction, or raises Fenced."""
        conn = self.connection()
        keys = list(batch.next_offsets)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                ADVANCE_OFFSETS,
                {
                    "group": self.group,
                    "topics": [t for t, _ in keys],
                    "partitions": [p for _, p in keys],
                    "expected": [expected[k] for k in keys],
                    "next": [batch.next_offsets[k] for k in keys],
                    "high": [high.get(k) for k in keys],
                },
            )
            if cur.rowcount != len(keys):
                raise Fenced(f"{len(keys) - cur.rowcount} of {len(keys)} partitions moved on since this batch began")
            if batch.user_events:
                (u, e), rows = zip(*batch.user_events), batch.user_events.values()
                cur.execute(UPSERT_USER_EVENTS, (list(u), list(e), *map(list, zip(*rows))))
            if batch.minutes:
                cur.execute(UPSERT_MINUTES, tuple(map(list, zip(*batch.minute_rows()))))
            if batch.sessions:
                cur.execute(UPSERT_SESSIONS, (list(batch.sessions), *map(list, zip(*batch.sessions.values()))))
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
                        [x.error for x in d],
                    ),
                )
        return True

    def reset(self) -> None:
        """Empties every aggregate and rewinds this group's offsets to 0, in one transaction.

        Running members then fail the fence on their next batch and resume from offset 0."""
        conn = self.connection()
        with conn.transaction():
            conn.execute("TRUNCATE " + ", ".join(f"streaming.{t}" for t in AGGREGATE_TABLES))
            conn.execute(
                "UPDATE streaming.consumer_offsets SET next_offset = 0, high_watermark = NULL, "
                "updated_at = clock_timestamp() WHERE consumer_group = %s",
                (self.group,),
            )

    def stored_offsets(self) -> dict[TopicPartition, int]:
        conn = self.connection()
        with conn.transaction():
            rows = conn.execute(
                'SELECT topic, "partition", next_offset FROM streaming.consumer_offsets WHERE consumer_group = %s',
                (self.group,),
            ).fetchall()
        return {(t, p): off for t, p, off in rows}
