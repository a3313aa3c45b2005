"""Deleting a user (`python -m stream_consumer users delete`, a tombstone on user_profiles), on a real
broker and Postgres with the real consumer: no row of theirs is left in any `streaming` table that
holds a user id (found from the catalog, as the deletion finds them), the others' rows are intact,
--suppress drops later events (counted in a metric), and a rebuild brings no one back."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.pipeline_harness import PARTITIONS, Pipeline
from tests.integration.test_hostile_input import owner, wait_for
from tests.support.ephemeral import ROOT
from tests.support.events import event_json

#: the tables of `streaming` that hold a user id, as the schema has them: a scan that finds fewer
#: would prove nothing about the missing ones
EXPECTED_TABLES = {
    "user_events",
    "sessions",
    "users",
    "event_ids_0",
    "event_ids_1",
    "event_log",
    "user_last_seen",
    "identities",
}

# The scan's own statement of "a column that holds a user id", kept apart from the code under test.
USER_ID_COLUMNS = """
SELECT c.table_name::text, c.column_name::text
FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = 'streaming' AND t.table_type = 'BASE TABLE' AND c.table_name <> 'deleted_users'
  AND (c.column_name IN ('user_id', 'anonymous_id') OR c.column_name LIKE '%%user_id')
ORDER BY 1, 2
"""


@pytest.fixture
def pipeline(pipeline: Pipeline):
    """The package's pipeline, and streaming.deleted_users emptied afterwards: the other tests'
    consumers must not drop the users deleted here."""
    yield pipeline
    owner(pipeline, "DELETE FROM streaming.deleted_users")
    owner(pipeline, "TRUNCATE streaming.event_log, streaming.user_last_seen, streaming.identities")


def users_tool(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_consumer", "users", *args],
        env=pipeline.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows_of(pipeline: Pipeline, ids: list[int]) -> dict[str, int]:
    """{table.column: rows holding one of `ids`} for every column of `streaming` that holds a user
    id, and the dead letters keyed by one of them."""
    found = {}
    for table, column in pipeline.query(USER_ID_COLUMNS):
        [(n,)] = pipeline.query(f'SELECT count(*) FROM streaming."{table}" WHERE "{column}" = ANY(%s)', ids)
        found[f"{table}.{column}"] = n
    [(n,)] = pipeline.query(
        "SELECT count(*) FROM streaming.dead_letter_events WHERE message_key = ANY(%s)", [str(u) for u in ids]
    )
    found["dead_letter_events.message_key"] = n
    return found


def tombstone(pipeline: Pipeline, user: bytes) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    producer.produce(pipeline.profiles_topic, None, user)
    assert producer.flush(30) == 0
    pipeline.sent.profiles += 1


def suppressed_metric(pipeline: Pipeline) -> float:
    found = re.search(r"^stream_consumer_suppressed_events_total (\S+)$", pipeline.consumer_metrics(), re.M)
    assert found, "no stream_consumer_suppressed_events_total in /metrics"
    return float(found.group(1))


def produce_events(pipeline: Pipeline, events: list[tuple[int, str]]) -> None:
    pipeline.produce_raw([(str(u).encode(), event_json(u, t), True) for u, t in events])


def test_deleted_users_leave_no_row_in_any_streaming_table_and_the_others_keep_theirs(pipeline: Pipeline):
    pipeline.start_consumer()
    pipeline.produce(events=5_000, malformed_share=0.02, seed=41, users=20)
    pipeline.produce_raw([(b"7", b"{broken", False), (b"8", b"{broken", False), (b"9", b"{broken", False)])
    pipeline.wait_until_consumed()
    # More rows of the tables the consumer writes for product analytics (event_log, user_last_seen,
    # identities): the anonymous id 900007 was identified as user 7, 900009 as user 9.
    owner(
        pipeline,
        """INSERT INTO streaming.event_log (user_id, occurred_at, event_type, page)
           SELECT u, now(), 'view', '/' FROM unnest(ARRAY[7, 8, 9, 900007, 900009]) AS u;
           INSERT INTO streaming.user_last_seen SELECT u, now() FROM unnest(ARRAY[7, 8, 9, 900007, 900009]) AS u
               ON CONFLICT DO NOTHING;
           INSERT INTO streaming.identities (anonymous_id, user_id, identified_at)
           VALUES (900007, 7, now()), (900009, 9, now())""",
    )
    before = rows_of(pipeline, [9, 900009])
    assert {k.split(".")[0] for k in rows_of(pipeline, [7])} >= EXPECTED_TABLES

    deleted = users_tool(pipeline, "delete", "7")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted user(s) 7 and the anonymous ids identified as them: 900007" in deleted.stdout
    assert re.search(r"streaming\.user_events: [1-9]\d* rows", deleted.stdout), deleted.stdout
    assert re.search(r"streaming\.dead_letter_events: [1-9]\d* rows", deleted.stdout), deleted.stdout
    tombstone(pipeline, b"8")  # a tombstone of a profile deletes its user as the command does
    wait_for(
        lambda: pipeline.query("SELECT 1 FROM streaming.deleted_users WHERE user_id = 8"), 60, "the tombstone of 8"
    )
    pipeline.wait_until_consumed()

    left = rows_of(pipeline, [7, 900007, 8])
    assert {k.split(".")[0] for k in left} >= EXPECTED_TABLES  # the scan saw every table that holds a user id
    assert {k for k, n in left.items() if n} == set(), left
    assert rows_of(pipeline, [9, 900009]) == before  # an untouched user keeps every row
    assert all(before[f"{t}.user_id"] for t in ("user_events", "sessions", "users", "event_log", "user_last_seen"))
    kept = {k: n for k, n in pipeline.sent.counts.items() if k[0] not in (7, 8)}
    assert pipeline.counts() == kept
    assert pipeline.query("SELECT user_id, suppress FROM streaming.deleted_users ORDER BY 1") == [
        (7, False),
        (8, False),
        (900007, False),
    ]
    # A tombstone whose key is not a user id deletes no one: a dead letter, as before.
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    producer.produce(pipeline.profiles_topic, None, b"not-a-user")
    assert producer.flush(30) == 0
    pipeline.sent.profiles += 1
    query = "SELECT reason, message_key FROM streaming.dead_letter_events WHERE topic = %s"
    wait_for(lambda: pipeline.query(query, pipeline.profiles_topic), 60, "the dead letter")
    assert pipeline.query(query, pipeline.profiles_topic) == [("null_value", "not-a-user")]


def test_suppress_drops_later_events_a_plain_delete_lets_them_count_and_a_rebuild_brings_no_one_back(
    pipeline: Pipeline,
):
    pipeline.start_consumer()
    produce_events(pipeline, [(501, "view"), (501, "click"), (502, "view"), (503, "view")])
    pipeline.wait_until_consumed()
    assert users_tool(pipeline, "delete", "--suppress", "501").returncode == 0
    assert users_tool(pipeline, "delete", "502").returncode == 0
    produce_events(pipeline, [(501, "view"), (501, "purchase"), (501, "view"), (502, "click"), (503, "click")])
    pipeline.wait_until_consumed()
    expected = {(502, "click"): 1, (503, "view"): 1, (503, "click"): 1}
    assert pipeline.counts() == expected
    assert sum(rows_of(pipeline, [501]).values()) == 0
    # the metric follows the commit (the consumer counts a batch once it has landed)
    wait_for(lambda: suppressed_metric(pipeline) >= 3, 30, "the metric to count the 3 dropped events")
    assert suppressed_metric(pipeline) == 3
    # A later plain delete (or tombstone) never lifts a suppression.
    assert users_tool(pipeline, "delete", "501").returncode == 0
    assert pipeline.query("SELECT user_id, suppress FROM streaming.deleted_users ORDER BY 1") == [
        (501, True),
        (502, False),
    ]
    produce_events(pipeline, [(501, "click")])
    pipeline.wait_until_consumed()
    assert pipeline.counts() == expected
    # A rebuild replays both topics from the start, the command's tombstones too: 501 stays gone,
    # 502 keeps only what came after its deletion.
    rebuild = pipeline.start_consumer("rebuild")
    assert rebuild.wait(timeout=120) == 0
    pipeline.wait_until_consumed()
    assert pipeline.counts() == expected
    assert sum(rows_of(pipeline, [501]).values()) == 0


def appended_after(pipeline: Pipeline, user: int, after_ms: int) -> int:
    """How many of `user`'s events Kafka appended to the events topic after `after_ms`."""
    c = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"scan-{uuid.uuid4()}", "log_level": 0})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(pipeline.topic, p), timeout=10)[1] for p in range(PARTITIONS)}
        c.assign([TopicPartition(pipeline.topic, p, 0) for p in range(PARTITIONS)])
        seen = {p: 0 for p in ends}
        n = 0
        while any(seen[p] < ends[p] for p in ends):
            for m in c.consume(10_000, timeout=5):
                if m.error():
                    continue
                seen[m.partition()] = m.offset() + 1
                if m.key() == str(user).encode() and m.timestamp()[1] > after_ms:
                    n += 1
        return n
    finally:
        c.close()


def test_a_deletion_mid_stream_keeps_exactly_the_events_appended_after_it(pipeline: Pipeline):
    """Events of the user stream in while the command runs: the batches commit wholly before or
    after it, and the user's count is exactly their events the broker appended after deleted_at,
    live and after a rebuild."""
    pipeline.start_consumer()
    pipeline.start_consumer()
    produce_events(pipeline, [(1, "view")])
    pipeline.wait_until_consumed()  # both members read
    background = pipeline.produce_in_background(events=40_000, rate=4_000, seed=43, users=5)
    t0 = time.monotonic()
    wait_for(lambda: sum(pipeline.counts().values()) > 3_000, 60, "events to flow")
    t1 = time.monotonic()
    deleted = users_tool(pipeline, "delete", "3")
    assert deleted.returncode == 0, deleted.stderr
    assert background.thread.is_alive(), ("the producer was done before the deletion", t1 - t0, time.monotonic() - t1)
    background.join(60)
    pipeline.wait_until_consumed()
    [(deleted_ms,)] = pipeline.query(
        "SELECT floor(extract(epoch FROM deleted_at) * 1000)::bigint FROM streaming.deleted_users WHERE user_id = 3"
    )
    later = appended_after(pipeline, 3, deleted_ms)
    before = sum(n for (u, _), n in pipeline.sent.counts.items() if u == 3) - later
    assert later > 500 and before > 500, (later, before, deleted_ms)  # the deletion fell mid-stream
    counts = pipeline.counts()
    assert sum(n for (u, _), n in counts.items() if u == 3) == later
    assert {k: n for k, n in counts.items() if k[0] != 3} == {
        k: n for k, n in pipeline.sent.counts.items() if k[0] != 3
    }
    [(sessions,)] = pipeline.query("SELECT coalesce(sum(event_count), 0) FROM streaming.sessions WHERE user_id = 3")
    assert sessions == later
    rebuild = pipeline.start_consumer("rebuild")
    assert rebuild.wait(timeout=180) == 0
    pipeline.wait_until_consumed()
    assert pipeline.counts() == counts


def test_users_delete_refuses_bad_ids_and_says_when_postgres_or_kafka_is_down(pipeline: Pipeline):
    for bad in ("0", "-5", "abc", "9223372036854775808"):
        refused = users_tool(pipeline, "delete", bad)
        assert refused.returncode == 2 and "USER_ID" in refused.stderr, (bad, refused.stderr)
    kafka = pipeline.env["KAFKA_BOOTSTRAP_SERVERS"]
    pipeline.env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    no_kafka = users_tool(pipeline, "delete", "5")
    assert no_kafka.returncode == 1 and "cannot reach Kafka at 127.0.0.1:1" in no_kafka.stderr, no_kafka.stderr
    pipeline.env["KAFKA_BOOTSTRAP_SERVERS"] = kafka
    pipeline.env["POSTGRES_PORT"] = "1"
    down = users_tool(pipeline, "delete", "5")
    assert down.returncode == 1 and "cannot connect to Postgres" in down.stderr, down.stderr
    with psycopg.connect(pipeline.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM streaming.deleted_users").fetchone() == (0,)
