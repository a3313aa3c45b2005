"""Deleting users, the pure parts: which messages of a deleted user a batch drops (around deleted_at,
with and without --suppress), profile tombstones, and `users delete`'s arguments."""

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.contract import BIGINT_MAX, Reason
from stream_consumer.__main__ import parser
from stream_consumer.batch import NOBODY, Batch, Record
from stream_consumer.users import user_id
from tests.support import events

DELETED_MS = 1_795_000_000_000  # 2026-11-18, epoch milliseconds
S1 = "0c8e1f4a-7b2d-4a66-b1f3-9d2e5c7a8b90"


def stamped(msg: Record, ms: int, kind: int = 2) -> Record:
    """The message as the broker stamped it at `ms` (kind 2: LogAppendTime; 1: a producer's CreateTime)."""
    msg._timestamp = (kind, ms)
    return msg


def event(user_id: int, ms: int, offset: int, event_type: str = "view", **fields) -> Record:
    body = events.event(user_id, event_type, session_id=S1, occurred_at="2026-11-18T09:00:00Z", **fields)
    return stamped(Record("user_events", 0, offset, events.key(body), events.encode(body)), ms)


def profile(user_id: int, ms: int, offset: int) -> Record:
    body = {
        "user_id": user_id,
        "name": "Ada",
        "email": "ada@example.com",
        "country": "GB",
        "signup_date": "2024-01-01",
        "plan": "free",
        "updated_at": "2026-11-18T09:00:00Z",
    }
    return stamped(Record("user_profiles", 0, offset, str(user_id).encode(), events.encode(body)), ms)


def tombstone(key: bytes | None, ms: int = DELETED_MS, offset: int = 0) -> Record:
    return stamped(Record("user_profiles", 0, offset, key, None), ms)


def batch(deleted=NOBODY) -> Batch:
    b = Batch("user_events", "user_profiles", 65536)
    b.deleted = deleted
    return b


def counted(b: Batch, user: int) -> int:
    return sum(r.events for (u, _), r in b.user_events.items() if u == user)


@settings(max_examples=300)
@given(
    deltas=st.lists(st.integers(-3, 3) | st.integers(-(10**6), 10**6), min_size=1, max_size=20),
    suppress=st.booleans(),
)
def test_a_deleted_users_events_count_only_when_appended_after_deleted_at_and_not_suppressed(deltas, suppress):
    """Appended at deleted_at + delta ms: counted iff delta > 0 and no --suppress; the others'
    events always count; each dropped one is counted as suppressed, none is a dead letter."""
    b = batch({7: (DELETED_MS, suppress)})
    msgs = []
    for i, d in enumerate(deltas):
        msgs += [event(7, DELETED_MS + d, 2 * i), event(8, DELETED_MS + d, 2 * i + 1)]
    b.add(msgs)
    later = 0 if suppress else sum(1 for d in deltas if d > 0)
    assert counted(b, 7) == later
    assert counted(b, 8) == len(deltas)
    assert b.suppressed == len(deltas) - later
    assert b.events == len(deltas) + later
    assert not b.dead_letters
    assert sum(r.events for (_, u), r in b.sessions.items() if u == 7) == later
    assert sum(r.events for r in b.minutes.values()) == b.events


def test_without_the_brokers_stamp_a_deleted_users_event_cannot_be_shown_later_and_is_dropped():
    b = batch({7: (DELETED_MS, False)})
    b.add([event(7, DELETED_MS + 60_000, 0), stamped(event(7, DELETED_MS + 60_000, 1), DELETED_MS + 60_000, kind=1)])
    assert (counted(b, 7), b.suppressed) == (1, 1)


def test_an_identify_naming_a_deleted_user_is_dropped_as_theirs():
    b = batch({7: (DELETED_MS, False)})
    b.add(
        [
            event(900, DELETED_MS - 1, 0, "identify", identified_user_id=7),
            event(900, DELETED_MS + 1, 1, "identify", identified_user_id=7),
            event(900, DELETED_MS - 1, 2, "view"),
        ]
    )
    assert (b.user_events[(900, "identify")].events, b.user_events[(900, "view")].events) == (1, 1)
    assert b.suppressed == 1


def test_a_deleted_users_profile_is_dropped_unless_appended_after_deleted_at():
    b = batch({7: (DELETED_MS, False), 8: (DELETED_MS, True)})
    b.add([profile(7, DELETED_MS, 0), profile(8, DELETED_MS + 5, 1), profile(9, DELETED_MS, 2)])
    assert set(b.users) == {9} and b.suppressed == 2
    b = batch({7: (DELETED_MS, False)})
    b.add([profile(7, DELETED_MS + 1, 0)])
    assert set(b.users) == {7}


def test_with_no_one_deleted_every_event_counts():
    b = batch()
    b.add([event(7, DELETED_MS - 10**6, 0), event(7, DELETED_MS, 1)])
    assert (counted(b, 7), b.suppressed) == (2, 0)


def test_a_tombstone_deletes_its_keys_user_at_its_append_time_the_latest_one_winning():
    b = batch()
    b.add([tombstone(b"7", DELETED_MS, 0), tombstone(b"7", DELETED_MS + 9, 1), tombstone(b"7", DELETED_MS - 9, 2)])
    b.add([tombstone(str(BIGINT_MAX).encode(), DELETED_MS, 3)])
    assert b.tombstones == {7: DELETED_MS + 9, BIGINT_MAX: DELETED_MS}
    assert not b.dead_letters and not b.users and b.next_offsets == {("user_profiles", 0): 4}


@pytest.mark.parametrize(
    "key", [None, b"", b"0", b"07", b"-7", b"+7", b" 7", b"7 ", b"abc", b"9223372036854775808", b"\xd9\xa1", b"1e3"]
)
def test_a_tombstone_whose_key_is_not_a_user_id_is_a_dead_letter(key):
    b = batch()
    b.add([tombstone(key)])
    assert b.tombstones == {}
    assert [d.reason for d in b.dead_letters] == [Reason.NULL_VALUE]
    assert "is not a user id" in b.dead_letters[0].error


@settings(max_examples=300)
@given(key=st.binary(max_size=24) | st.integers(-(2**64), 2**64).map(lambda n: str(n).encode()))
def test_any_tombstone_key_is_a_deletion_of_that_user_or_one_dead_letter(key):
    b = batch()
    b.add([tombstone(key)])
    valid = key.isdigit() and str(int(key)).encode() == key and 1 <= int(key) <= BIGINT_MAX
    assert (b.tombstones, len(b.dead_letters)) == (({int(key): DELETED_MS}, 0) if valid else ({}, 1))


def aggregates(b: Batch) -> tuple:
    return (
        b.user_events,
        b.minutes,
        b.sessions,
        b.users,
        b.dead_letters,
        b.next_offsets,
        b.events,
        b.suppressed,
        b.tombstones,
    )


@settings(max_examples=100)
@given(
    picks=st.lists(st.tuples(st.sampled_from([7, 8, 9]), st.integers(-5, 5), st.booleans()), max_size=30),
    suppress=st.booleans(),
)
def test_a_batch_aggregated_again_without_deleted_users_is_the_batch_aggregated_knowing_them(picks, suppress):
    """What a batch's transaction does when a deletion committed since the batch was aggregated."""
    deleted = {7: (DELETED_MS, suppress), 8: (DELETED_MS + 2, False)}
    msgs = [
        (profile(u, DELETED_MS + d, i) if is_profile else event(u, DELETED_MS + d, i))
        for i, (u, d, is_profile) in enumerate(picks)
    ]
    msgs.append(tombstone(b"9", DELETED_MS, len(msgs)))
    late = batch()
    late.add(msgs)
    knowing = batch(deleted)
    knowing.add(msgs)
    again = late.without_deleted(deleted)
    assert aggregates(again) == aggregates(knowing)
    assert again.deleted is deleted
    assert all(h.deleted is deleted for h in again.halves())


@pytest.mark.parametrize("text", ["1", "42", str(BIGINT_MAX), " 7 "])
def test_user_ids_within_the_contracts_bounds_are_taken(text):
    assert user_id(text) == int(text)


@pytest.mark.parametrize("text", ["0", "-1", str(BIGINT_MAX + 1), "1.5", "abc", "", "\u0661", "1e3", "0x10"])
def test_anything_else_is_refused_with_the_bounds(text):
    with pytest.raises(argparse.ArgumentTypeError, match="user id"):
        user_id(text)


def test_users_delete_takes_ids_and_suppress_and_refuses_no_ids_or_bad_ones(capsys):
    args = parser().parse_args(["users", "delete", "--suppress", "3", "4"])
    assert (args.command, args.action, args.ids, args.suppress) == ("users", "delete", [3, 4], True)
    assert parser().parse_args(["users", "delete", "3"]).suppress is False
    for argv in (["users", "delete"], ["users", "delete", "3", "0"], ["users"]):
        with pytest.raises(SystemExit) as exit_:
            parser().parse_args(argv)
        assert exit_.value.code == 2
    assert "out of range: 1 to 9223372036854775807" in capsys.readouterr().err
