"""The event-id window in Postgres (streaming.event_ids): keyed per user, its generations' rotation
against batches in flight, and the upgrade from the first release's table."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.contract import MAY_REPEAT_HEADER
from common.settings import env_file_values
from kafka_producer.producer import produce_one
from stream_consumer.batch import Batch, event_key
from stream_consumer.store import Window, record_event_ids, rotate_event_ids
from tests.support.ephemeral import ROOT
from tests.support.events import event

#: The events' occurred_at where a test does not say (epoch seconds)
AT = 1_790_000_000.0


def keys_batch(pairs: list[tuple[int, uuid.UUID]], times: list[float] | None = None) -> Batch:
    """A batch holding these (user_id, event_id) keys of events at `times`, as Batch.add collects them."""
    batch = Batch("t", "p", 65536, dedup_window=60)
    for (u, e), t in zip(pairs, times or [AT] * len(pairs), strict=True):
        if (k := event_key(u, e)) not in batch.event_ids:
            batch.event_ids.add(k)
            batch.id_keys.append(k)
            batch.id_times.append(t)
    return batch


def record(
    dsn: str, pairs: list[tuple[int, uuid.UUID]], window: Window | None = None, times: list[float] | None = None
) -> set[int]:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        return record_event_ids(cur, keys_batch(pairs, times), window or Window())


def test_the_same_event_id_from_two_users_counts_for_both_and_a_users_copy_once(pipeline):
    """Through Kafka, the real consumer and Postgres: user 2 sends user 1's event_id (with the
    collector's header): both count; each user's copies, in the same batch and in later ones, don't."""
    pipeline.start_consumer()
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    shared = str(uuid.uuid4())
    mine, theirs = {**event(user_id=1), "event_id": shared}, {**event(user_id=2), "event_id": shared}

    def send(*events: dict) -> None:
        for e in events:
            produce_one(
                producer, pipeline.topic, str(e["user_id"]).encode(), json.dumps(e).encode(), [MAY_REPEAT_HEADER]
            )
        assert producer.flush(30) == 0

    send(mine, theirs, theirs)
    pipeline.sent.messages = 3
    pipeline.wait_until_consumed(timeout=60)
    send(theirs, mine)  # a later batch
    pipeline.sent.messages = 5
    pipeline.wait_until_consumed(timeout=60)
    counts = dict(pipeline.query("SELECT user_id, sum(event_count) FROM streaming.user_events GROUP BY user_id"))
    assert counts == {1: 1, 2: 1}
    assert sorted(pipeline.query("SELECT user_id, event_id::text FROM streaming.event_ids")) == [
        (1, shared),
        (2, shared),
    ]
    # a copy the window drops leaves no second row in the event log either
    assert sorted(pipeline.query("SELECT user_id, count(*) FROM streaming.event_log GROUP BY 1")) == [(1, 1), (2, 1)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.lists(st.tuples(st.integers(1, 2**63 - 1), st.sampled_from([uuid.UUID(int=1)]) | st.uuids()), max_size=8),
    second=st.lists(st.tuples(st.integers(1, 2**63 - 1), st.sampled_from([uuid.UUID(int=1)]) | st.uuids()), max_size=8),
    data=st.data(),
)
def test_any_pairs_are_seen_again_exactly_when_recorded_before(pipeline, first, second, data):
    """Hypothesis at Postgres' edge: any user ids and event ids, a second batch that repeats any of
    the first's keys or swaps their users: Postgres answers with exactly the keys recorded before."""
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE streaming.event_ids")
    first = list(dict.fromkeys(first))
    second = list(dict.fromkeys(second + data.draw(st.lists(st.sampled_from(first), max_size=4)) if first else second))
    assert record(pipeline.dsn, first) == set()
    # the keys' arrays (store.key_arrays, built byte by byte) reach Postgres as the very pairs
    assert set(pipeline.query("SELECT user_id, event_id FROM streaming.event_ids")) == set(first)
    assert record(pipeline.dsn, second) == {event_key(u, e) for u, e in second if (u, e) in set(first)}
    # the careful path (after a unique violation) answers the same
    assert record(pipeline.dsn, second, Window(careful=1)) == {event_key(u, e) for u, e in second}


def test_a_copy_in_the_current_generation_takes_the_careful_path_and_is_answered(pipeline):
    """A key the current slot holds fails the fast path's plain INSERT (a unique violation, undone
    by its savepoint); the batch is recorded by the careful path, which answers it as seen."""
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE streaming.event_ids")
    a, b = (5, uuid.uuid4()), (6, uuid.uuid4())
    window = Window()
    assert record(pipeline.dsn, [a], window) == set() and window.careful == 0
    assert record(pipeline.dsn, [b, a], window) == {event_key(*a)}
    assert window.careful > 0
    [(n,)] = pipeline.query("SELECT count(*) FROM streaming.event_ids")
    assert n == 2


def test_a_rotation_waits_for_a_batch_in_flight_and_keeps_what_it_recorded(pipeline):
    """A batch that recorded keys and has not committed holds the rotation off (no slot is emptied
    or swapped under it); once it commits, its keys are in the generation before the current one,
    still checked."""
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE streaming.event_ids")
        conn.execute("UPDATE streaming.event_id_generation SET started_at = now() - interval '1 hour'")
    key = (7, uuid.uuid4())
    rotated: list[int] = []
    with psycopg.connect(pipeline.dsn) as conn, conn.cursor() as cur:
        assert record_event_ids(cur, keys_batch([key]), Window()) == set()
        rotation = threading.Thread(target=lambda: rotated.append(rotate_event_ids(pipeline.dsn, 60)))
        rotation.start()
        time.sleep(1.5)
        assert rotation.is_alive() and not rotated  # waiting for this batch
        conn.commit()
    rotation.join(30)
    assert rotated == [0]
    assert record(pipeline.dsn, [key]) == {event_key(*key)}


def rotate_now(dsn: str) -> None:
    """A new generation at once: the current slot becomes the one before."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE streaming.event_id_generation SET started_at = now() - interval '1 hour'")
    rotate_event_ids(dsn, 60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(st.tuples(st.integers(1, 5), st.uuids(), st.floats(AT - 3600, AT + 3600)), min_size=1, max_size=6),
    later=st.lists(st.tuples(st.integers(1, 5), st.uuids(), st.floats(AT - 3600, AT + 7200)), max_size=6),
    data=st.data(),
)
def test_after_a_rotation_every_copy_is_found_whatever_the_events_times(pipeline, before, later, data):
    """Keys recorded in two batches, a rotation (they are now the generation before), then copies of
    any of them (a copy carries its event's occurred_at) among new keys at any times, late ones
    included: the copies are answered as seen, the new keys are not, though only copies not newer
    than the older generation's newest event are looked up there."""
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE streaming.event_ids, streaming.event_id_spans")
    before = list({(u, e): (u, e, t) for u, e, t in before}.values())
    half = len(before) // 2
    for part in (before[:half], before[half:]):
        if part:
            assert record(pipeline.dsn, [(u, e) for u, e, _ in part], times=[t for *_, t in part]) == set()
    rotate_now(pipeline.dsn)
    [(bound,)] = pipeline.query("SELECT extract(epoch FROM other_newest)::float8 FROM streaming.event_id_generation")
    assert max(t for *_, t in before) < bound < max(t for *_, t in before) + 0.002
    copies = data.draw(st.lists(st.sampled_from(before), min_size=1, max_size=4, unique=True))
    fresh = [x for x in later if (x[0], x[1]) not in {(u, e) for u, e, _ in before}]
    batch = list({(u, e): (u, e, t) for u, e, t in copies + fresh}.values())
    seen = record(pipeline.dsn, [(u, e) for u, e, _ in batch], times=[t for *_, t in batch])
    assert seen == {event_key(u, e) for u, e, _ in copies}


def test_an_older_generation_without_a_bound_is_looked_up_whole_after_the_upgrade(pipeline):
    """Ids recorded before the bound existed (an other slot holding ids, no bound): the init that
    every start runs makes every copy look it up ('infinity') until the next rotation."""
    key = (4, uuid.uuid4())
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE streaming.event_ids, streaming.event_id_spans")
    assert record(pipeline.dsn, [key], times=[AT]) == set()
    rotate_now(pipeline.dsn)
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE streaming.event_id_spans")
        conn.execute("UPDATE streaming.event_id_generation SET other_newest = NULL")  # as before the upgrade
    run_postgres_init(pipeline)
    assert pipeline.query("SELECT other_newest::text FROM streaming.event_id_generation") == [("infinity",)]
    assert record(pipeline.dsn, [key], times=[AT + 86_400]) == {event_key(*key)}


def run_postgres_init(pipeline) -> None:
    """postgres/init/10-init.sh again, as every start of either mode runs it."""
    env = {**env_file_values(ROOT / ".env"), **pipeline.env}
    env.update(PGHOST=env["POSTGRES_HOST"], PGPORT=env["POSTGRES_PORT"], PGPASSWORD=env["POSTGRES_PASSWORD"])
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    env["PATH"] = f"{bins[-1]}:{os.environ['PATH']}"
    subprocess.run(["bash", str(ROOT / "postgres" / "init" / "10-init.sh")], env=env, check=True, capture_output=True)


def test_an_event_ids_table_of_the_first_release_is_replaced_at_upgrade(pipeline):
    """The first release's window (event_id alone, seen_at) is dropped by the init that every start
    runs; the new one works for the consumer's role (grants), and a second init changes nothing."""
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE streaming.event_ids, streaming.event_id_generation")
        conn.execute("CREATE TABLE streaming.event_ids (event_id uuid PRIMARY KEY, seen_at timestamptz NOT NULL)")
        conn.execute("CREATE INDEX event_ids_seen_at_idx ON streaming.event_ids (seen_at)")
        conn.execute("INSERT INTO streaming.event_ids VALUES (gen_random_uuid(), now())")
    run_postgres_init(pipeline)
    run_postgres_init(pipeline)
    shape = pipeline.query(
        "SELECT relkind::text, (SELECT count(*) FROM pg_inherits WHERE inhparent = c.oid) FROM pg_class c "
        "WHERE oid = 'streaming.event_ids'::regclass"
    )
    assert shape == [("p", 2)]
    assert pipeline.query("SELECT count(*) FROM streaming.event_ids") == [(0,)]
    pipeline.start_consumer()
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    e = event(user_id=3)
    for _ in range(2):
        produce_one(producer, pipeline.topic, b"3", json.dumps(e).encode(), [MAY_REPEAT_HEADER])
    assert producer.flush(30) == 0
    pipeline.sent.messages = 2
    pipeline.wait_until_consumed(timeout=60)
    assert pipeline.query("SELECT user_id, event_id::text FROM streaming.event_ids") == [(3, e["event_id"])]
