"""Exactly once, against a real broker and a real Postgres, through crashes, rebalances and outages.

Each test would fail with the reference README's consumer (docs/architecture.md, "The baseline
that fails": per-message `event_count + 1` and Kafka auto-commit): a crash between its Postgres
commit and its next offset auto-commit replays the messages since the last auto-commit, and those
are counted again.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import signal
import threading
import time

import psycopg

from common.settings import Settings
from native.context import wait_until
from stream_consumer.batch import Batch, Record
from stream_consumer.store import Store
from tests.integration.pipeline_harness import Pipeline, sigkill
from tests.support.events import event_json


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
    with pipeline.commits_held():  # the old owner's next transaction waits on the offset rows
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
    with pipeline.commits_held():
        pipeline.produce(events=40_000, malformed_share=0.01, seed=21, profiles=False)
        time.sleep(4)
    pipeline.wait_until_consumed()

    def batches() -> dict[str, float]:  # the histogram of committed batches' sizes, by bucket
        pattern = r'stream_consumer_batch_messages_bucket\{le="([^"]+)"\} (\S+)'
        return {le: float(n) for le, n in re.findall(pattern, pipeline.consumer_metrics())}

    # the last batch is counted in the metrics just after its transaction commits
    assert wait_until(lambda: batches()["+Inf"] > batches()["10000.0"], 10), batches()
    pipeline.assert_exactly_once()


BATCHES = 5


def test_members_counting_the_same_minutes_side_by_side_never_deadlock(pipeline: Pipeline):
    """Users are split between members by partition, but every member adds to the same minutes of
    streaming.event_minutes: each transaction must lock them in one order, or two members that
    meet wait for each other until Postgres kills one (a deadlock: a stall, an error in the log).
    Two writers here, one with its minutes in ascending order and one descending, side by side."""
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    minutes = [now - dt.timedelta(minutes=m) for m in range(3000)]
    settings = Settings(kafka_topic=pipeline.topic)
    failures: list[str] = []
    start = threading.Barrier(2, timeout=60)  # a member that died breaks it: the other stops too

    def member(partition: int, order: list[dt.datetime]) -> None:
        store = Store(pipeline.dsn, pipeline.group)
        key = (pipeline.topic, partition)
        offset = store.load_offsets([key], {key: 0})[key]
        for _ in range(BATCHES):
            batch = Batch.for_settings(settings)
            records = [
                Record(pipeline.topic, partition, offset + i, b"%d" % user, event_json(user, occurred_at=at))
                for i, (user, at) in enumerate(((partition * 100_000 + i + 1, at) for i, at in enumerate(order)))
            ]
            batch.add(records)
            start.wait()  # both transactions at once
            try:
                store.commit(batch, {key: offset}, {})
                offset = batch.next_offsets[key]
            except Exception as exc:  # a deadlock, or whatever else ended this member
                failures.append(str(exc))
                store.close()
                start.abort()
                raise
        store.close()

    threads = [
        threading.Thread(target=member, args=(0, minutes)),
        threading.Thread(target=member, args=(1, minutes[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    [(counted,)] = pipeline.query("SELECT sum(event_count) FROM streaming.event_minutes")
    assert counted == 2 * BATCHES * len(minutes)
