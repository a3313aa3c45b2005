"""Micro-batch aggregation: counts, time bounds, revenue, sessions, profiles and dead letters."""

import datetime as dt
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.contract import MAY_REPEAT_HEADER, Reason
from stream_consumer.batch import Batch, Record, SessionRow, UserEventRow, event_key
from stream_consumer.store import referrer_host, stored_text
from tests.support import events
from tests.support.strategies import (
    edge_values,
    hostile_events,
    is_contract_url,
    is_contract_utm,
    is_user_id,
    json_values,
    urls,
)

APPENDED = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def Msg(value, key=None, topic="user_events", partition=0, offset=0, appended=APPENDED, headers=None) -> Record:
    """A Kafka message as the consumer sees it, stamped by the broker at `appended`."""
    return Record(topic, partition, offset, key, value, appended, headers)


S1, S2 = "0c8e1f4a-7b2d-4a66-b1f3-9d2e5c7a8b90", "1c8e1f4a-7b2d-4a66-b1f3-9d2e5c7a8b90"


def event(user_id=1, event_type="view", at="2026-11-22T10:00:30Z", session=S1, amount=None, offset=0, partition=0):
    body = events.event(user_id, event_type, session_id=session, occurred_at=at, amount=amount)
    return Msg(events.encode(body), events.key(body), partition=partition, offset=offset)


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
    assert b.user_events[(1, "view")] == UserEventRow(3, ts("2026-11-22T09:59:00Z"), ts("2026-11-22T10:05:00Z"))
    assert b.user_events[(1, "click")].events == 1


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
    row = b.sessions[(uuid.UUID(S1), 1)]
    assert row == SessionRow(ts("2026-11-22T10:00:00Z"), ts("2026-11-22T10:03:00Z"), 2, 1, 500)
    assert b.sessions[(uuid.UUID(S2), 1)].events == 1


def test_a_session_id_shared_by_two_users_is_a_session_of_each():
    b = batch_of(event(user_id=1), event(user_id=2, offset=1), event(user_id=1, offset=2))
    assert {k: r.events for k, r in b.sessions.items()} == {(uuid.UUID(S1), 1): 2, (uuid.UUID(S1), 2): 1}


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
    b = batch_of(Msg(event(user_id=7).value(), b"8"))
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


def test_event_time_is_bounded_by_the_brokers_stamp_plus_the_skew():
    late_ok = event(at="2026-11-22T12:04:59Z", offset=0)
    too_far = event(at="2026-11-22T12:05:01Z", offset=1)
    b = batch_of(late_ok, too_far)
    assert (b.events, [(d.offset, d.reason) for d in b.dead_letters]) == (1, [(1, Reason.EVENT_TIME)])


def test_without_a_broker_stamp_the_batchs_clock_is_the_reference():
    msg = event(at="2026-11-22T12:00:00Z")
    msg._timestamp = (1, int(dt.datetime(9999, 1, 1, tzinfo=dt.UTC).timestamp() * 1000))  # a producer's create time
    b = Batch(
        "user_events", "user_profiles", 65536, wall_clock=dt.datetime(2026, 11, 22, 11, tzinfo=dt.UTC).timestamp()
    )
    b.add([msg])
    assert b.dead_letters[0].reason == Reason.EVENT_TIME and b.dead_letters[0].kafka_timestamp is None


def test_an_event_at_the_end_of_time_is_a_dead_letter_not_a_crash():
    b = batch_of(event(at="9999-12-31T23:59:59-01:00"), event(offset=1))
    assert (b.events, b.dead_letters[0].reason, b.next_offsets) == (1, Reason.EVENT_TIME, {("user_events", 0): 2})


def test_an_unexpected_exception_on_one_message_files_it_and_leaves_the_aggregates_alone(monkeypatch):
    import stream_consumer.batch as batch_module

    real = batch_module.decode_event

    def flaky(value, *args):
        if b'"user_id": 2' in value:
            raise RuntimeError("boom")
        return real(value, *args)

    monkeypatch.setattr(batch_module, "decode_event", flaky)
    b = batch_of(event(user_id=1), event(user_id=2, offset=1), event(user_id=1, offset=2))
    assert b.user_events[(1, "view")].events == 2 and (2, "view") not in b.user_events
    assert (b.dead_letters[0].reason, b.dead_letters[0].error) == (
        Reason.INTERNAL_ERROR,
        "consumer error: RuntimeError: boom",
    )


def test_dead_letters_keep_the_brokers_stamp_and_whether_the_raw_value_is_whole():
    b = Batch("user_events", "user_profiles", 100)
    b.add([Msg(b"{oops", b"1"), Msg(b"x" * 500, b"1", offset=1), Msg(b"\xff", b"1", offset=2)])
    assert [d.raw_value_exact for d in b.dead_letters] == [True, False, False]
    assert {d.kafka_timestamp for d in b.dead_letters} == {APPENDED}


def test_halves_split_the_messages_in_order_and_add_up_to_the_whole():
    msgs = [event(user_id=1 + i % 3, offset=i, partition=i % 2) for i in range(9)] + [Msg(b"bad", b"1", offset=9)]
    whole = batch_of(*msgs)
    first, second = whole.halves()
    assert (len(first), len(second)) == (5, 5)
    assert first.events + second.events == whole.events and len(first.dead_letters + second.dead_letters) == 1
    assert second.next_offsets == whole.next_offsets and first.next_offsets == {
        ("user_events", 0): 5,
        ("user_events", 1): 4,
    }


def test_a_refused_message_becomes_a_dead_letter_that_still_advances_its_offset():
    filed = batch_of(event(offset=41)).refused("refused by Postgres (SQLSTATE 22003): numeric field overflow")
    assert (filed.events, filed.user_events, filed.next_offsets) == (0, {}, {("user_events", 0): 42})
    assert (filed.dead_letters[0].reason, filed.dead_letters[0].raw_value_exact) == (Reason.REFUSED_BY_POSTGRES, True)


@pytest.mark.parametrize("bare", [False, True])
def test_a_refused_message_stays_a_dead_letter_when_a_deletion_makes_its_batch_aggregate_again(bare):
    """A deletion committed since (store.Deletions.prepare) aggregates a batch again from its
    messages: a refused one must not turn back into the event Postgres refused."""
    filed = batch_of(event(offset=41)).refused("refused by Postgres (SQLSTATE 23514)", bare=bare)
    again = filed.without_deleted({99: (0, True)})
    assert (again.events, again.user_events, again.next_offsets) == (0, {}, {("user_events", 0): 42})
    assert again.dead_letters == filed.dead_letters and again.deleted == {99: (0, True)}


def with_fields(offset: int, event_type: str = "view", **fields) -> Record:
    """A view of user 1 (or another type) with these fields set, at `offset`."""
    body = events.event(1, event_type, session_id=S1, occurred_at="2026-11-22T10:00:30Z", **fields)
    return Msg(events.encode(body), events.key(body), offset=offset)


@pytest.mark.parametrize(
    "hostile",
    [
        {"referrer": "javascript:alert(1)"},
        {"referrer": "https://evil.example@bank.example/"},
        {"referrer": "https://example.com/" + "a" * 2029},
        {"utm_source": "a" * 101},
        {"utm_medium": "cpc\n"},
        {"utm_campaign": "\u202esale"},
        {"utm_campaign": ""},
        {"identified_user_id": 7},
        {"event_type": "identify"},
        {"event_type": "identify", "identified_user_id": 0},
        {"event_type": "identify", "identified_user_id": 2**63},
    ],
)
def test_a_hostile_value_in_a_product_analytics_field_costs_exactly_one_dead_letter(hostile):
    fields = dict(hostile)
    b = batch_of(with_fields(0), with_fields(1, fields.pop("event_type", "view"), **fields), with_fields(2))
    assert [(d.offset, d.reason) for d in b.dead_letters] == [(1, Reason.CONTRACT)]
    assert (b.events, b.user_events[(1, "view")].events, b.next_offsets) == (2, 2, {("user_events", 0): 3})


def test_product_analytics_fields_within_their_bounds_are_counted_like_any_event():
    b = batch_of(
        with_fields(0, referrer="https://www.google.com/", utm_source="google", utm_medium="cpc", utm_campaign="x"),
        with_fields(1, "identify", identified_user_id=9),
    )
    assert (b.events, b.dead_letters, {k: r.events for k, r in b.user_events.items()}) == (
        2,
        [],
        {(1, "view"): 1, (1, "identify"): 1},
    )


NEW_FIELDS = ["referrer", "utm_source", "utm_medium", "utm_campaign", "identified_user_id"]


@settings(max_examples=300)
@given(st.data())
def test_any_value_in_a_product_analytics_field_is_counted_or_one_dead_letter(data):
    """Whatever one message carries in a new field, it is counted or filed, alone: its neighbours count."""
    field = data.draw(st.sampled_from(NEW_FIELDS))
    value = data.draw(edge_values[field] | json_values)
    event_type = data.draw(st.sampled_from(["view", "identify"]))
    b = batch_of(with_fields(0), with_fields(1, event_type, **{field: value}), with_fields(2))
    if field == "identified_user_id":
        valid = (event_type == "identify") == (value is not None) and (value is None or is_user_id(value))
    else:
        check = is_contract_url if field == "referrer" else is_contract_utm
        valid = event_type == "view" and (value is None or (isinstance(value, str) and check(value)))
    assert [(d.offset, d.reason) for d in b.dead_letters] == ([] if valid else [(1, Reason.CONTRACT)])
    assert (b.events, b.user_events[(1, "view")].events) == (
        3 if valid else 2,
        3 if valid and event_type == "view" else 2,
    )
    assert b.next_offsets == {("user_events", 0): 3}


def test_a_bare_refusal_keeps_neither_key_nor_raw_value():
    d = batch_of(event()).refused("refused \u00e9", bare=True).dead_letters[0]
    assert (d.key, d.raw_value, d.raw_value_exact, d.error) == (None, None, False, "refused \\xe9")


# --- generated input: whatever arrives, every message is counted or filed, and nothing raises ----


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(hostile_events() | st.binary(max_size=64) | st.none(), st.sampled_from([b"42", b"7", None, b"\xff"])),
        max_size=30,
    )
)
def test_any_messages_are_each_counted_or_dead_lettered_exactly_once(pairs):
    msgs = [
        Msg(value, key, offset=i, appended=dt.datetime(2026, 11, 22, 15, 10, tzinfo=dt.UTC))
        for i, (value, key) in enumerate(pairs)
    ]
    b = Batch("user_events", "user_profiles", 65536)
    b.add(msgs)
    assert b.events + len(b.dead_letters) == len(msgs) == len(b)
    assert sum(r.events for r in b.user_events.values()) == b.events == sum(r.events for r in b.minutes.values())
    assert sum(r.events for r in b.sessions.values()) == b.events
    assert sorted(d.offset for d in b.dead_letters) == sorted(set(d.offset for d in b.dead_letters))


def with_id(msg: Record, event_id: str, offset: int, may_repeat: bool = True) -> Record:
    """The event of `msg` with this id, as the collector sends it (MAY_REPEAT_HEADER) unless not `may_repeat`."""
    body = json.loads(msg.value())
    body["event_id"] = event_id
    return Msg(json.dumps(body).encode(), msg.key(), offset=offset, headers=[MAY_REPEAT_HEADER] if may_repeat else None)


IDS = [str(uuid.UUID(int=i + 1)) for i in range(6)]


def key(event_id: str, user_id: int) -> int:
    """The dedup window's key of a user's event_id (EventKey)."""
    return event_key(user_id, uuid.UUID(event_id))


@settings(max_examples=200)
@given(
    picks=st.lists(
        st.tuples(st.sampled_from(IDS), st.integers(1, 3), st.sampled_from(["view", "purchase"])), max_size=30
    ),
    known=st.sets(st.tuples(st.sampled_from(IDS), st.integers(1, 3))),
)
def test_with_a_dedup_window_each_users_event_id_counts_once_and_known_keys_not_at_all(picks, known):
    """Retries of one user's event (the same user and event_id, whatever else the copy says) count
    once; another user's event with the same id counts too; the keys an earlier batch counted within
    the window (`known`) count not at all. Offsets and dead letters stay those of every message."""
    msgs = [
        with_id(event(user_id=u, event_type=t, amount=1.5 if t == "purchase" else None), i, n)
        for n, (i, u, t) in enumerate(picks)
    ]
    msgs.append(Msg(b"not json", b"1", offset=len(msgs)))
    batch = Batch("user_events", "user_profiles", 65536, dedup_window=60)
    batch.add(msgs)
    first_copies: dict[tuple[str, int], str] = {}
    for i, u, t in picks:
        first_copies.setdefault((i, u), t)
    assert batch.event_ids == {key(i, u) for i, u in first_copies} and batch.events == len(first_copies)
    assert batch.id_keys == [key(i, u) for i, u in first_copies]
    assert batch.duplicates == len(picks) - len(first_copies)
    again = batch.deduplicated({key(i, u) for i, u in known})
    kept = {iu: t for iu, t in first_copies.items() if iu not in known}
    assert (again.events, again.duplicates) == (len(kept), len(picks) - len(kept))
    want: dict = {}
    for (_, u), t in kept.items():
        want[(u, t)] = want.get((u, t), 0) + 1
    assert {k: r.events for k, r in again.user_events.items()} == want
    assert sum(r.revenue_cents for r in again.minutes.values()) == 150 * sum(t == "purchase" for t in kept.values())
    assert again.next_offsets == batch.next_offsets == {("user_events", 0): len(msgs)}
    assert [d.offset for d in again.dead_letters] == [len(msgs) - 1]


def test_the_same_event_id_from_two_users_counts_for_both():
    """One visitor cannot suppress another's event by sending its id: the window keys on the pair."""
    mine, theirs = event(user_id=1), event(user_id=2)
    shared = IDS[0]
    batch = Batch("user_events", "user_profiles", 65536, dedup_window=60)
    batch.add([with_id(mine, shared, 0), with_id(theirs, shared, 1), with_id(theirs, shared, 2)])
    assert (batch.events, batch.duplicates) == (2, 1)
    assert {u for u, _ in batch.user_events} == {1, 2}
    # a key known from an earlier batch suppresses that user's copy only
    again = batch.deduplicated({key(shared, 2)})
    assert {u: r.events for (u, _), r in again.user_events.items()} == {1: 1}


@settings(max_examples=300)
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from([1, 2, 2**63 - 1]) | st.integers(1, 2**63 - 1),
            st.sampled_from(IDS[:2]) | st.uuids().map(str),
        ),
        max_size=20,
    ).flatmap(lambda ps: st.permutations(ps + ps[: len(ps) // 2]))
)
def test_any_users_and_ids_count_once_per_pair(pairs):
    """Hypothesis at the edge: any user ids of the contract (1 to 2^63 - 1) and any uuids, repeated in
    any order: the batch counts exactly the distinct (user_id, event_id) pairs, each once."""
    msgs = [with_id(event(user_id=u), i, n) for n, (u, i) in enumerate(pairs)]
    batch = Batch("user_events", "user_profiles", 65536, dedup_window=60)
    batch.add(msgs)
    distinct = {(u, uuid.UUID(i)) for u, i in pairs}
    assert batch.events == len(distinct) and batch.duplicates == len(pairs) - len(distinct)
    assert sorted(batch.id_keys) == sorted(event_key(u, e) for u, e in distinct)
    per_user: dict[int, int] = {}
    for u, _ in distinct:
        per_user[u] = per_user.get(u, 0) + 1
    assert {u: r.events for (u, _), r in batch.user_events.items()} == per_user


def test_only_events_that_may_repeat_are_checked_and_recorded():
    """MAY_REPEAT_HEADER (the collector's): its events count once per id; events without it (an
    idempotent producer that mints each id once, as kafka_producer) are neither checked nor recorded."""
    msg = event()
    plain = [with_id(msg, IDS[0], n, may_repeat=False) for n in range(2)]
    may_repeat = [Msg(msg.value(), msg.key(), offset=n, headers=[("other", b"x"), MAY_REPEAT_HEADER]) for n in (2, 3)]
    batch = Batch("user_events", "user_profiles", 65536, dedup_window=60)
    batch.add([*plain, *may_repeat])
    msg_id = json.loads(msg.value())["event_id"]
    user_id = json.loads(msg.value())["user_id"]
    assert (batch.events, batch.duplicates, batch.event_ids) == (3, 1, {key(msg_id, user_id)})
    again = batch.deduplicated({key(IDS[0], user_id), key(msg_id, user_id)})
    assert (again.events, again.duplicates) == (2, 2)


class BadHeaders(Record):
    """A message whose header names are not UTF-8: confluent_kafka raises when asked for them."""

    def headers(self):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


@settings(max_examples=200)
@given(
    headers=st.none()
    | st.lists(
        st.tuples(
            st.sampled_from(["event-ids", "Event-Ids", "x"]) | st.text(max_size=20), st.none() | st.binary(max_size=20)
        )
        | st.sampled_from([MAY_REPEAT_HEADER, ("event-ids", b"may-repeat ")]),
        max_size=6,
    )
)
def test_any_headers_count_a_copy_once_exactly_when_they_hold_the_may_repeat_header(headers):
    """Whatever headers a producer sends (none, empty, look-alikes, null values), two copies of one
    event count once if the exact MAY_REPEAT_HEADER is among them, else twice; nothing raises."""
    msg = event()
    batch = Batch("user_events", "user_profiles", 65536, dedup_window=60)
    batch.add([Msg(msg.value(), msg.key(), offset=n, headers=headers) for n in (0, 1)])
    marked = headers is not None and MAY_REPEAT_HEADER in headers
    assert (batch.events, batch.duplicates) == ((1, 1) if marked else (2, 0))


def test_header_names_that_are_not_utf8_make_one_dead_letter_and_stop_nothing():
    msg = event()
    bad = BadHeaders(msg.topic(), 0, 1, msg.key(), msg.value(), APPENDED)
    batch = Batch("user_events", "user_profiles", 65536, dedup_window=60)
    batch.add([with_id(msg, IDS[0], 0), bad, with_id(msg, IDS[1], 2)])
    assert batch.events == 2 and [(d.offset, d.reason) for d in batch.dead_letters] == [(1, Reason.MALFORMED)]
    assert "header name is not UTF-8" in batch.dead_letters[0].error
    assert batch.next_offsets == {("user_events", 0): 3}
    # without a window, headers are not read at all: the event counts
    plain = Batch("user_events", "user_profiles", 65536)
    plain.add([bad])
    assert (plain.events, plain.dead_letters) == (1, [])


def test_without_a_dedup_window_every_copy_counts():
    msg = event()
    batch = batch_of(msg, with_id(msg, json.loads(msg.value())["event_id"], 1))
    assert (batch.events, batch.duplicates, batch.event_ids) == (2, 0, None)


# --- product analytics: event_log, user_last_seen, identities, sessions' first touch --------------

SESSIONS = [S1, S2]
PAGES = ["/", "/products/1", None]
REFERRERS = ["https://www.Google.com/search?q=x", "http://news.example:8080/a", None]
UTMS = ["google", "spring sale", None]
T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


@st.composite
def product_events(draw) -> dict:
    """An event of user 1-3 in one of two sessions at one of a few times (ties likely), with or
    without each first-touch field; an identify names one of three known users."""
    event_type = draw(st.sampled_from(["view", "click", "identify"]))
    fields = {
        "page": draw(st.sampled_from(PAGES)),
        "referrer": draw(st.sampled_from(REFERRERS)),
        "utm_source": draw(st.sampled_from(UTMS)),
        "utm_medium": draw(st.sampled_from(UTMS)),
        "utm_campaign": draw(st.sampled_from(UTMS)),
    }
    if event_type == "identify":
        fields["identified_user_id"] = draw(st.integers(100, 102))
    at = T0 + dt.timedelta(seconds=draw(st.integers(0, 5)), microseconds=draw(st.sampled_from([0, 1, 999_999])))
    body = events.event(
        draw(st.integers(1, 3)), event_type, session_id=draw(st.sampled_from(SESSIONS)), occurred_at=at, **fields
    )
    return {k: v for k, v in body.items() if v is not None}


TOUCH = ("page", "referrer", "utm_source", "utm_medium", "utm_campaign")


def oracle(bodies: list[dict]) -> dict:
    """The product-analytics tables the events make, whatever the batches: written as rules."""
    log, last_seen, identities, touch = [], {}, {}, {}
    for e in bodies:
        user, at = e["user_id"], ts(e["occurred_at"])
        log.append((user, at, e["event_type"], e.get("page")))
        last_seen[user] = max(last_seen.get(user, at), at)
        if e["event_type"] == "identify":
            pair = (user, e["identified_user_id"])
            identities[pair] = max(identities.get(pair, at), at)
        key = (uuid.UUID(e["session_id"]), user)
        if key not in touch or at < touch[key][0]:  # the earliest; of equal times, the first to arrive
            touch[key] = (at, *(e.get(f) for f in TOUCH))
    return {"log": sorted(log, key=repr), "last_seen": last_seen, "identities": identities, "touch": touch}


def fold(batches: list[Batch]) -> dict:
    """The tables after each batch's rows were written as store.py's statements write them: appended,
    the greater time kept, a session's first touch replaced by an earlier batch's."""
    log, last_seen, identities, touch = [], {}, {}, {}
    for b in batches:
        log += zip(b.log_users, b.log_times, b.log_types, b.log_pages)
        for user, at in b.last_seen().items():
            last_seen[user] = max(last_seen.get(user, at), at)
        for pair, at in b.identities.items():
            identities[pair] = max(identities.get(pair, at), at)
        for key, row in b.sessions.items():
            if key not in touch or row.first_at < touch[key][0]:
                touch[key] = (
                    row.first_at,
                    row.landing_page,
                    row.referrer,
                    row.utm_source,
                    row.utm_medium,
                    row.utm_campaign,
                )
    return {"log": sorted(log, key=repr), "last_seen": last_seen, "identities": identities, "touch": touch}


@settings(max_examples=300)
@given(bodies=st.lists(product_events(), max_size=25), data=st.data())
def test_any_split_into_batches_gives_the_tables_of_the_whole_sequence(bodies, data):
    """Any split of a sequence of events into batches writes one event_log row per event, each
    user's latest time, each identified pair's latest time and each session's earliest event's first
    touch (late earlier events replace it, ties keep the first): what the whole sequence says."""
    msgs = [Msg(events.encode(b), events.key(b), offset=i) for i, b in enumerate(bodies)]
    cuts = sorted(data.draw(st.sets(st.integers(0, len(msgs)), max_size=5)))
    batches = [batch_of(*msgs[a:b]) for a, b in zip([0, *cuts], [*cuts, len(msgs)])]
    assert not any(b.dead_letters for b in batches)
    assert fold(batches) == oracle(bodies)


def test_event_log_keeps_each_counted_event_and_no_dead_letter():
    b = batch_of(
        with_fields(0, page="/a"), Msg(b"{oops", b"1", offset=1), with_fields(2, "click"), with_fields(3, page="/b")
    )
    assert list(zip(b.log_users, b.log_types, b.log_pages)) == [
        (1, "view", "/a"),
        (1, "click", None),
        (1, "view", "/b"),
    ]
    assert b.log_times == [ts("2026-11-22T10:00:30Z")] * 3


def test_a_duplicate_dropped_by_the_dedup_window_gets_no_event_log_row():
    msg = with_fields(0, page="/once")
    first, copy = with_id(msg, IDS[0], 0), with_id(msg, IDS[0], 1)
    batch = Batch("user_events", "user_profiles", 65536, dedup_window=60)
    batch.add([first, copy, with_id(msg, IDS[1], 2)])
    assert (batch.events, batch.log_pages) == (2, ["/once", "/once"])
    # counted by an earlier batch within the window: rebuilt without it, and without its row
    again = batch.deduplicated({key(IDS[0], 1)})
    assert (again.events, again.log_users, again.log_pages) == (1, [1], ["/once"])


def test_halves_keep_each_event_log_row_with_its_event():
    msgs = [with_fields(i, page=f"/{i}") for i in range(7)] + [Msg(b"bad", b"1", offset=7)]
    whole = batch_of(*msgs)
    first, second = whole.halves()
    assert first.log_pages + second.log_pages == whole.log_pages == [f"/{i}" for i in range(7)]
    assert len(first.log_users) == first.events and len(second.log_users) == second.events


def test_identify_keeps_each_pairs_latest_time_and_only_identify_events_make_pairs():
    def identify(offset, known, at):
        body = events.event(5, "identify", session_id=S1, occurred_at=at, identified_user_id=known)
        return Msg(events.encode(body), b"5", offset=offset)

    b = batch_of(
        identify(0, 9, "2026-11-22T10:00:05Z"),
        identify(1, 9, "2026-11-22T10:00:01Z"),  # an earlier identify of the same pair, arriving late
        identify(2, 8, "2026-11-22T10:00:03Z"),
        with_fields(3),
    )
    assert b.identities == {(5, 9): ts("2026-11-22T10:00:05Z"), (5, 8): ts("2026-11-22T10:00:03Z")}


def test_a_late_earlier_event_replaces_the_sessions_whole_first_touch():
    def touch(offset, at, **fields):
        body = events.event(1, "view", session_id=S1, occurred_at=at, **fields)
        return Msg(events.encode(body), b"1", offset=offset)

    b = batch_of(
        touch(0, "2026-11-22T10:00:10Z", page="/a", referrer="https://a.example/", utm_source="x", utm_campaign="c"),
        touch(1, "2026-11-22T10:00:20Z", page="/b", referrer="https://b.example/", utm_medium="m"),
        touch(2, "2026-11-22T10:00:05Z", page="/landing"),  # earlier, without referrer or utm: all five go
    )
    row = b.sessions[(uuid.UUID(S1), 1)]
    assert (row.landing_page, row.referrer, row.utm_source, row.utm_medium, row.utm_campaign) == (
        "/landing",
        None,
        None,
        None,
        None,
    )
    assert (row.first_at, row.last_at, row.events) == (ts("2026-11-22T10:00:05Z"), ts("2026-11-22T10:00:20Z"), 3)


def test_last_seen_is_each_users_latest_event_whatever_its_type():
    b = batch_of(
        event(user_id=1, at="2026-11-22T10:00:30Z"),
        event(user_id=1, event_type="click", at="2026-11-22T10:02:00Z", offset=1),
        event(user_id=1, at="2026-11-22T10:01:00Z", offset=2),
        event(user_id=2, at="2026-11-22T09:00:00Z", offset=3),
    )
    assert b.last_seen() == {1: ts("2026-11-22T10:02:00Z"), 2: ts("2026-11-22T09:00:00Z")}


@settings(max_examples=500)
@given(st.one_of(urls, st.sampled_from(["https://[]/", "https://a[b/", "https://[::1]:80/", "HTTP://X"])))
def test_any_contract_referrer_has_a_lowercase_host_and_never_raises(url):
    """store.referrer_host on whatever the contract takes as a referrer: a host, lowercase, without
    port, path, query or fragment; a name[:port] split at its first colon, as the contract reads it."""
    if not is_contract_url(url):
        return
    host = referrer_host(url)
    rule = url.partition("://")[2]
    for end in "/?#":
        rule = rule.split(end, 1)[0]
    assert host is None or (host == host.lower() and not set(host) & set("/?#@"))
    if host is not None and "[" not in rule and "]" not in rule:
        assert host == rule.partition(":")[0].lower()


def test_referrer_hosts_as_a_traffic_source_names_them():
    assert [
        referrer_host(u) for u in ["https://WWW.Google.com/search?q=a", "http://[::1]:8080/", "https://a.b:99#x"]
    ] == [
        "www.google.com",
        "::1",
        "a.b",
    ]


def test_stored_text_escapes_nul_as_dead_letters_do_and_leaves_the_rest():
    assert (stored_text("/a\x00b"), stored_text("/é?x=1")) == ("/a\\x00b", "/é?x=1")
