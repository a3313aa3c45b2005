"""Micro-batch aggregation: counts, time bounds, revenue, sessions, profiles and dead letters."""

import datetime as dt
import json
import uuid

from stream_consumer.batch import Batch


class Msg:
    """A Kafka message as the consumer sees it (the accessors of confluent_kafka.Message)."""

    def __init__(self, value, key=None, topic="user_events", partition=0, offset=0):
        self._v, self._k, self._t, self._p, self._o = value, key, topic, partition, offset

    def value(self):
        return self._v

    def key(self):
        return self._k

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o


S1, S2 = "0c8e1f4a-7b2d-4a66-b1f3-9d2e5c7a8b90", "1c8e1f4a-7b2d-4a66-b1f3-9d2e5c7a8b90"


def event(user_id=1, event_type="view", at="2026-11-22T10:00:30Z", session=S1, amount=None, offset=0, partition=0):
    body = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user_id,
        "session_id": session,
        "occurred_at": at,
        "amount": amount,
    }
    return Msg(json.dumps(body).encode(), str(user_id).encode(), partition=partition, offset=offset)


def batch_of(*msgs):
    b = Batch("user_events", "user_profiles", 65536)
    b.add(list(msgs))
    return b


def ts(text):
    return dt.datetime.fromisoformat(text)


def test_counts_per_user_and_type_with_first_and_last_occurrence():
    b = batch_of(
        event(at="2026-11-22T10:00:30Z"),
        event(at="2026-11-22T09:59:00Z"),
        event(at="2026-11-22T10:05:00Z"),
        event(event_type="click"),
    )
    assert b.user_events[(1, "view")] == [3, ts("2026-11-22T09:59:00Z"), ts("2026-11-22T10:05:00Z")]
    assert b.user_events[(1, "click")][0] == 1


def test_minutes_bucket_by_occurred_at_and_sum_revenue_in_cents():
    b = batch_of(
        event(event_type="purchase", amount=10.5, at="2026-11-22T10:00:01Z"),
        event(event_type="purchase", amount=0.25, at="2026-11-22T10:00:59.999Z"),
        event(event_type="purchase", amount=1, at="2026-11-22T10:01:00Z"),
    )
    assert sorted(b.minute_rows()) == [
        (ts("2026-11-22T10:00:00Z"), "purchase", 2, 1075),
        (ts("2026-11-22T10:01:00Z"), "purchase", 1, 100),
    ]


def test_minutes_are_utc_minutes_whatever_the_offset():
    b = batch_of(event(at="2026-11-22T15:30:10+05:30"), event(at="2026-11-22T10:00:50Z"))
    assert b.minute_rows() == [(ts("2026-11-22T10:00:00Z"), "view", 2, 0)]


def test_sessions_collect_span_events_purchases_and_revenue():
    b = batch_of(
        event(at="2026-11-22T10:00:00Z"),
        event(event_type="purchase", amount=5, at="2026-11-22T10:03:00Z"),
        event(session=S2),
    )
    row = b.sessions[uuid.UUID(S1)]
    assert row == [1, ts("2026-11-22T10:00:00Z"), ts("2026-11-22T10:03:00Z"), 2, 1, 500]
    assert b.sessions[uuid.UUID(S2)][3] == 1


def test_next_offsets_are_one_past_the_last_message_per_partition():
    b = batch_of(event(offset=5), event(offset=6), event(offset=9, partition=2))
    assert b.next_offsets == {("user_events", 0): 7, ("user_events", 2): 10}


def test_invalid_messages_become_dead_letters_and_still_advance_the_offset():
    b = batch_of(event(offset=1), Msg(b"{oops", b"1", offset=2), Msg(b"\x00\xff", None, offset=3))
    assert [(d.offset, d.raw_value) for d in b.dead_letters] == [(2, "{oops"), (3, "\\x00\\xff")]
    assert "malformed" in b.dead_letters[0].error
    assert b.next_offsets[("user_events", 0)] == 4
    assert (b.events, len(b)) == (1, 3)


def test_a_key_that_is_not_the_user_id_is_a_dead_letter():
    msg = event(user_id=7)
    msg._k = b"8"
    b = batch_of(msg)
    assert "not the event's user_id 7" in b.dead_letters[0].error
    assert b.user_events == {}


def test_oversize_dead_letter_keeps_a_bounded_prefix():
    b = Batch("user_events", "user_profiles", 1000)
    b.add([Msg(b"x" * 5000, b"1")])
    assert len(b.dead_letters[0].raw_value) == 1000
    assert "keeps the first 1000 bytes" in b.dead_letters[0].error


def profile(user_id, name, updated_at, offset=0):
    body = {
        "user_id": user_id,
        "name": name,
        "email": "x@example.com",
        "country": "US",
        "signup_date": "2024-02-03",
        "plan": "pro",
        "updated_at": updated_at,
    }
    return Msg(json.dumps(body).encode(), str(user_id).encode(), topic="user_profiles", offset=offset)


def test_profiles_keep_the_newest_version_whatever_the_arrival_order():
    b = batch_of(profile(3, "new", "2026-02-01T00:00:00Z"), profile(3, "old", "2026-01-01T00:00:00Z", offset=1))
    assert b.users[3].name == "new"
    assert b.next_offsets == {("user_profiles", 0): 2}
