"""The writer's answer to each kind of Postgres failure, against a store that fails on cue (the
real Postgres cases are in tests/integration/test_hostile_input.py)."""

import datetime as dt
import json
import uuid

import psycopg
import pytest

from common.contract import Reason
from stream_consumer.batch import Batch, Record
from stream_consumer.store import is_data_error
from stream_consumer.writer import Health, Writer

APPENDED = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)


def message(offset: int, user_id: int) -> Record:
    body = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "event_type": "view",
        "user_id": user_id,
        "session_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-22T11:59:00Z",
    }
    return Record("user_events", 0, offset, str(user_id).encode(), json.dumps(body).encode(), APPENDED)


class Store:
    """Refuses any batch that counts user 666 (as a CHECK constraint would), or fails `systemic`
    times with a systemic error first; records what it committed."""

    def __init__(self, systemic: list[Exception] = ()) -> None:
        self.systemic = list(systemic)
        self.committed: list[Batch] = []
        self.offset = 0

    def commit(self, batch, start, end):
        if self.systemic:
            raise self.systemic.pop(0)
        assert start[("user_events", 0)] == self.offset, "a part committed out of order"
        if any(u == 666 for u, _ in batch.user_events):
            raise psycopg.errors.CheckViolation("new row violates check constraint")
        self.committed.append(batch)
        self.offset = batch.next_offsets[("user_events", 0)]
        return batch

    def close(self) -> None:
        pass


def batch(*users: int) -> Batch:
    b = Batch("user_events", "user_profiles", 65536)
    b.add([message(i, u) for i, u in enumerate(users)])
    return b


@pytest.mark.parametrize(
    ("error", "data"),
    [
        (psycopg.errors.NumericValueOutOfRange("numeric field overflow"), True),
        (psycopg.errors.CheckViolation("check"), True),
        (psycopg.errors.UniqueViolation("duplicate key"), True),
        (psycopg.DataError("cannot dump"), True),  # refused before it reached the server
        (psycopg.errors.InsufficientPrivilege("permission denied"), False),
        (psycopg.errors.UndefinedTable("no such table"), False),
        (psycopg.errors.UndefinedColumn("no such column"), False),
        (psycopg.errors.ReadOnlySqlTransaction("read-only"), False),
        (psycopg.errors.DiskFull("no space left"), False),
        (psycopg.OperationalError("server closed the connection"), False),
    ],
)
def test_only_sqlstate_classes_22_and_23_are_a_messages_fault(error, data):
    assert is_data_error(error) is data


def test_a_refused_batch_is_split_until_the_one_message_is_a_dead_letter():
    store = Store()
    landed = Writer(store, Health(), lambda: False).commit(batch(*[1] * 10, 666, *[2] * 5), {("user_events", 0): 0}, {})
    assert (landed.messages, landed.events) == (16, 15)
    assert [(d.offset, d.reason) for d in landed.dead_letters] == [(10, Reason.REFUSED_BY_POSTGRES)]
    assert "23514" in landed.dead_letters[0].error and store.offset == 16


def test_a_refused_batch_of_one_is_a_dead_letter_too():
    landed = Writer(Store(), Health(), lambda: False).commit(batch(666), {("user_events", 0): 0}, {})
    assert (landed.messages, landed.events, len(landed.dead_letters), landed.transactions) == (1, 0, 1, 1)


def test_a_systemic_error_stalls_then_resumes_without_dead_letters(monkeypatch):
    monkeypatch.setattr("stream_consumer.writer.time.sleep", lambda s: None)
    health = Health()
    seen = []
    store = Store([psycopg.errors.InsufficientPrivilege("permission denied for table user_events")] * 3)
    original = store.commit

    def watched(*args):
        seen.append(health.healthy)
        return original(*args)

    store.commit = watched
    landed = Writer(store, health, lambda: False).commit(batch(1, 2, 3), {("user_events", 0): 0}, {})
    assert (landed.events, landed.dead_letters, seen, health.healthy) == (3, [], [True, False, False, False], True)


def test_a_stall_gives_up_when_the_consumer_stops(monkeypatch):
    monkeypatch.setattr("stream_consumer.writer.time.sleep", lambda s: None)
    store = Store([psycopg.errors.ReadOnlySqlTransaction("read-only transaction")] * 100)
    assert Writer(store, Health(), lambda: True).commit(batch(1), {("user_events", 0): 0}, {}) is None
    assert store.committed == []
