"""No contract-valid input can make `dbt build` fail, and no input at all can make the consumer's
code raise: events at every bound of the contract, and generated hostile messages (Hypothesis),
through the consumer's real decoding, aggregation and writer (splits included) into Postgres, then
`dbt build` of every mart and its tests."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.contract import AMOUNT_MAX, BIGINT_MAX, EVENT_TIME_FLOOR
from stream_consumer.batch import Batch, Record
from stream_consumer.store import Store
from stream_consumer.writer import Health, Writer
from tests.integration.dbt_harness import (
    PROFILES,
    TOPIC,
    Event,
    differences,
    expected_marts,
    marts,
)
from tests.support.events import STREAMING_TABLES, event_json
from tests.support.strategies import hostile_events

ARRIVED = dt.datetime.now(dt.UTC).replace(microsecond=0)
LATEST = ARRIVED + dt.timedelta(minutes=5)  # the default CONSUMER_MAX_FUTURE_SKEW


class Feed:
    """Writes batches with the consumer's own Batch and Writer; counts what they say landed."""

    def __init__(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(STREAMING_TABLES)}, streaming.dead_letter_events")
            conn.execute("DELETE FROM streaming.consumer_offsets WHERE consumer_group = 'hostile_marts'")
        self.store = Store(dsn, "hostile_marts")
        self.writer = Writer(self.store, Health(), lambda: False)
        self.offset = 0
        self.messages = self.events = self.dead_letters = 0

    def write(self, pairs: list[tuple[bytes | None, bytes | None]]) -> None:
        batch = Batch(TOPIC, PROFILES, 65536)
        batch.add([Record(TOPIC, 0, self.offset + i, key, value, ARRIVED) for i, (key, value) in enumerate(pairs)])
        self.offset += len(pairs)
        start = self.store.load_offsets(list(batch.next_offsets))
        landed = self.writer.commit(batch, start, {})
        assert landed is not None and landed.messages == len(pairs)
        self.messages += len(pairs)
        self.events += landed.events
        self.dead_letters += len(landed.dead_letters)


@pytest.fixture(scope="module")
def feed(dsn) -> Feed:
    f = Feed(dsn)
    yield f
    f.store.close()


def on_the_edges() -> list[Event]:
    """Contract-valid events at every bound: the oldest and newest times, the largest id and
    amount, the longest type; sessions that span the whole allowed range."""
    span = uuid.UUID(int=1, version=4)
    rich = uuid.UUID(int=2, version=4)
    top = AMOUNT_MAX
    return [
        Event(1, "view", span, EVENT_TIME_FLOOR),
        Event(1, "view", span, LATEST),
        Event(BIGINT_MAX, "purchase", rich, EVENT_TIME_FLOOR, Decimal(top)),
        *[Event(BIGINT_MAX, "purchase", rich, LATEST, Decimal(top)) for _ in range(50)],
        Event(2, "a" * 50, uuid.UUID(int=3, version=4), ARRIVED),
        Event(2, "purchase", uuid.UUID(int=4, version=4), EVENT_TIME_FLOOR + dt.timedelta(milliseconds=1), Decimal(0)),
    ]


def test_every_mart_builds_from_events_on_the_contracts_edges(dsn, dbt, feed):
    edge = on_the_edges()
    feed.write([(str(e.user_id).encode(), e.json()) for e in edge])
    assert feed.dead_letters == 0
    dbt("build", "--full-refresh")
    assert differences(marts(dsn), expected_marts(edge, {})) == {}


def valid_at_the_edges() -> st.SearchStrategy[bytes]:
    times = st.sampled_from([EVENT_TIME_FLOOR, LATEST, ARRIVED]) | st.datetimes(
        min_value=EVENT_TIME_FLOOR.replace(tzinfo=None),
        max_value=LATEST.replace(tzinfo=None),
        timezones=st.just(dt.UTC),
    )
    amounts = st.sampled_from([0, 0.01, AMOUNT_MAX]) | st.floats(0, AMOUNT_MAX)

    @st.composite
    def build(draw) -> bytes:
        event_type = draw(st.sampled_from(["view", "click", "purchase", "a" * 50, "z9_"]))
        return event_json(
            draw(st.sampled_from([1, 2, BIGINT_MAX])),
            event_type,
            session_id=uuid.UUID(int=draw(st.integers(1, 5)), version=4),
            occurred_at=draw(times),
            amount=draw(amounts) if event_type == "purchase" else None,
        )

    return build()


message = st.one_of(
    valid_at_the_edges().map(lambda v: (str(json.loads(v)["user_id"]).encode(), v)),
    st.tuples(st.sampled_from([b"42", b"1", None]), hostile_events() | st.binary(max_size=40) | st.none()),
)


def stored(dsn: str) -> tuple[int, int, int]:
    """(events counted, dead letters, next offset stored) as Postgres holds them."""
    with psycopg.connect(dsn) as conn:
        [(events,)] = conn.execute("SELECT coalesce(sum(event_count), 0) FROM streaming.user_events").fetchall()
        [(dead,)] = conn.execute("SELECT count(*) FROM streaming.dead_letter_events").fetchall()
        [(offset,)] = conn.execute(
            "SELECT next_offset FROM streaming.consumer_offsets WHERE consumer_group = 'hostile_marts'"
        ).fetchall()
    return events, dead, offset


@settings(max_examples=80, suppress_health_check=list(HealthCheck))
@given(st.lists(message, min_size=1, max_size=40))
def test_generated_messages_are_each_counted_or_dead_lettered_once(feed, dsn, pairs):
    """Judged by what was sent, not by what the writer says it wrote: every message sent is one
    event counted or one dead letter, and its offset is stored."""
    before = stored(dsn) if feed.messages else (0, 0, 0)
    feed.write(pairs)
    events, dead, offset = (after - earlier for after, earlier in zip(stored(dsn), before))
    assert (events + dead, offset) == (len(pairs), len(pairs))


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(message, min_size=1, max_size=40))
def test_every_mart_builds_after_generated_messages(feed, dbt, pairs):
    """Each example writes its own messages, then builds (incrementally, and again from scratch):
    the test needs no other to run first."""
    feed.write(pairs)
    dbt("build")
    dbt("build", "--full-refresh")
