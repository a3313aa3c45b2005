"""Exactly once, against a real broker and a real Postgres, through crashes, rebalances and outages.

Each test would fail with the reference README's consumer (docs/architecture.md, "The baseline
that fails": per-message `event_count + 1` and Kafka auto-commit): a crash between its Postgres
commit and its next offset auto-commit replays the messages since the last auto-commit, and those
are counted again.
"""

from __future__ import annotations

import random
import re
import signal
import time

import psycopg

from native.context import wait_until
from tests.integration.pipeline_harness import Pipeline, sigkill


def test_kill_9_every_second_or_two_counts_each_event_once(pipeline: Pipeline):
    for _ in range(3):
        pipeline.start_consumer()
    producing = pipeline.produce_in_background(events=200_000, malformed_share=0.01, rate=8_000, seed=11)
    rng = random.Random(5)
    kills = 0
    while kills < 15:
        time.sleep(rng.uniform(1.0, 2.0))
        victim = rng.choice(pipeline.alive())
        sigkill(victim)
        kills += 1
        pipeline.start_consumer()
    producing.join()
    pipeline.wait_until_consumed()
    assert kills == 15 and len(pipeline.sent.dead_letters) > 1000
    pipeline.assert_exactly_once()


def test_members_joining_and_leaving_mid_stream_count_each_event_once(pipeline: Pipeline):
    first = pipeline.start_consumer()
    producing = pipeline.produce_in_background(events=60_000, malformed_share=0.01, rate=6_000, seed=12)
    time.sleep(2)
    joiners = [pipeline.start_consumer() for _ in range(3)]
    time.sleep(3)
    # its SIGTERM handler is in place once it serves /healthz (on a loaded machine the signal could
    # otherwise arrive while it still imports, and end it as signals end any process)
    assert wait_until(lambda: pipeline.health(0)[0] != 0, 60), "the first consumer never started serving"
    first.send_signal(signal.SIGTERM)  # a clean leave: finishes its batch, leaves the group
    assert first.wait(timeout=30) == 0
    time.sleep(2)
    joiners[0].send_signal(signal.SIGTERM)
    pipeline.start_consumer()
    producing.join()
    pipeline.wait_until_consumed()
    pipeline.assert_exactly_once()


def test_postgres_restart_mid_stream_loses_and_duplicates_nothing(pipeline: Pipeline, stack):
    for _ in range(2):
        pipeline.start_consumer()
    producing = pipeline.produce_in_background(events=40_000, malformed_share=0.01, rate=5_000, seed=13)
    time.sleep(3)
    stack("restart", "postgres")
    producing.join()
    pipeline.wait_until_consumed()
    assert all(p.poll() is None for p in pipeline.consumers), "a consumer exited during the outage"
    pipeline.assert_exactly_once()


def test_kafka_broker_restart_mid_stream_loses_and_duplicates_nothing(pipeline: Pipeline, stack):
    for _ in range(2):
        pipeline.start_consumer()
    pipeline.produce(events=20_000, malformed_share=0.01, seed=14)
    time.sleep(2)
    stack("restart", "kafka")
    pipeline.produce(events=20_000, malformed_share=0.01, seed=15, profiles=False)
    pipeline.wait_until_consumed()
    assert all(p.poll() is None for p in pipeline.consumers), "a consumer exited during the outage"
    pipeline.assert_exactly_once()


def test_rebuild_from_the_topic_gives_identical_aggregates(pipeline: Pipeline):
    pipeline.start_consumer()
    pipeline.produce(events=30_000, malformed_share=0.01, seed=16)
    pipeline.wait_until_consumed()
    # every column but written_xid: the id of the transaction that wrote the row, new after a rebuild
    sessions = (
        "session_id, user_id, first_event_at, last_event_at, event_count, purchase_count, revenue, "
        "landing_page, referrer_host, utm_source, utm_medium, utm_campaign"
    )
    tables = {
        "user_events": "*",
        "event_minutes": "*",
        "sessions": sessions,
        "users": "*",
        "event_log": "user_id, occurred_at, event_type, page",
        "user_last_seen": "*",
        "identities": "anonymous_id, user_id, identified_at",
    }
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:  # a deleted user stays deleted
        conn.execute("INSERT INTO streaming.deleted_users (user_id) VALUES (987654321)")
    before = {t: sorted(pipeline.query(f"SELECT {cols} FROM streaming.{t}"), key=repr) for t, cols in tables.items()}
    dead_before = pipeline.query('SELECT "partition", "offset", error FROM streaming.dead_letter_events ORDER BY 1, 2')
    rebuild = pipeline.start_consumer("rebuild")
    assert rebuild.wait(timeout=120) == 0
    pipeline.wait_until_consumed()
    after = {t: sorted(pipeline.query(f"SELECT {cols} FROM streaming.{t}"), key=repr) for t, cols in tables.items()}
    assert after == before and all(before.values())
    assert pipeline.query("SELECT user_id FROM streaming.deleted_users WHERE user_id = 987654321") == [(987654321,)]
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM streaming.deleted_users WHERE user_id = 987654321")
    assert (
        pipeline.query('SELECT "partition", "offset", error FROM streaming.dead_letter_events ORDER BY 1, 2')
        == dead_before
    )
    pipeline.assert_exactly_once()


def test_a_member_paused_past_its_session_timeout_cannot_double_count(pipeline: Pipeline):
    zombie = pipeline.start_consumer()
    producing = pipeline.produce_in_background(events=40_000, malformed_share=0.01, rate=4_000, seed=17)
    time.sleep(3)
    zombie.send_signal(signal.SIGSTOP)  # frozen mid-stream, holding an open batch
    successor = pipeline.start_consumer()
    time.sleep(8)  # past the 3 s session timeout: the successor owns every partition now
    zombie.send_signal(signal.SIGCONT)
    producing.join()
    pipeline.wait_until_consumed()
    time.sleep(2)
    assert successor.poll() is None and zombie.poll() is None
    pipeline.assert_exactly_once()


def test_a_member_that_lost_its_partitions_mid_commit_cannot_commit_over_its_successor(pipeline: Pipeline):
    old_owner = pipeline.start_consumer()
    pipeline.produce(events=5_000, malformed_share=0.01, seed=18)
    pipeline.wait_until_consumed()
    with psycopg.connect(pipeline.dsn) as blocker:
        # Hold every commit of the group: the old owner's next transaction waits on the offset rows.
        blocker.execute(
            "SELECT * FROM streaming.consumer_offsets WHERE consumer_group = %s FOR UPDATE", (pipeline.group,)
        )
        pipeline.produce(events=5_000, malformed_share=0.01, seed=19, profiles=False)
        time.sleep(2)
        # Frozen mid-commit, it misses its heartbeats: the successor takes every partition, reads
        # the same stored offsets and the same messages, and waits on the same rows.
        old_owner.send_signal(signal.SIGSTOP)
        successor = pipeline.start_consumer()
        successor_log = pipeline.logs / f"consumer_{len(pipeline.consumers) - 1}.log"
        deadline = time.monotonic() + 60
        while "@" not in _assigned_lines(successor_log) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)
    # Lock released: the old owner's offset update was queued first and matches; once it wakes up
    # its transaction commits, and the successor's fence must refuse the second copy.
    time.sleep(1)
    old_owner.send_signal(signal.SIGCONT)
    pipeline.wait_until_consumed()
    time.sleep(3)
    assert "fenced off" in successor_log.read_text()
    assert old_owner.poll() is None and successor.poll() is None
    pipeline.assert_exactly_once()


def _assigned_lines(log) -> str:
    return "".join(line for line in log.read_text().splitlines() if " assigned " in line)


def test_a_batch_grows_while_the_one_before_is_still_being_committed(pipeline: Pipeline):
    # A batch is due after 1 ms, and one read takes at most 10,000 messages: a batch larger than
    # that can only be read while the writer is busy with the batch before (consumer.py's loop).
    pipeline.env["CONSUMER_BATCH_MAX_MS"] = "1"
    pipeline.start_consumer()
    pipeline.produce(events=2_000, seed=20)
    pipeline.wait_until_consumed()
    with psycopg.connect(pipeline.dsn) as blocker:
        # Every commit of the group waits on its offset rows while this transaction is open.
        blocker.execute(
            "SELECT * FROM streaming.consumer_offsets WHERE consumer_group = %s FOR UPDATE", (pipeline.group,)
        )
        pipeline.produce(events=40_000, malformed_share=0.01, seed=21, profiles=False)
        time.sleep(4)
    pipeline.wait_until_consumed()

    def batches() -> dict[str, float]:  # the histogram of committed batches' sizes, by bucket
        pattern = r'stream_consumer_batch_messages_bucket\{le="([^"]+)"\} (\S+)'
        return {le: float(n) for le, n in re.findall(pattern, pipeline.consumer_metrics())}

    # the last batch is counted in the metrics just after its transaction commits
    assert wait_until(lambda: batches()["+Inf"] > batches()["10000.0"], 10), batches()
    pipeline.assert_exactly_once()
