"""The product-analytics tables in Postgres (streaming.event_log, user_last_seen, identities,
sessions' first touch) as the consumer's statements write them, batch after batch."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.settings import Settings
from stream_consumer.batch import Batch, Record
from stream_consumer.store import Store, write_aggregates
from tests.support import events
from tests.support.events import STREAMING_TABLES

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
SESSIONS = [uuid.UUID(int=1), uuid.UUID(int=2)]
REFERRERS = {"https://www.Google.com/search?q=x": "www.google.com", "http://news.example:8080/a": "news.example"}


@st.composite
def product_events(draw) -> dict:
    """An event of user 1-3 in one of two sessions at one of a few times (ties likely), with or
    without each first-touch field; an identify names one of three known users."""
    event_type = draw(st.sampled_from(["view", "click", "identify"]))
    fields = {
        "page": draw(st.sampled_from(["/", "/products/1", None])),
        "referrer": draw(st.sampled_from([*REFERRERS, None])),
        "utm_source": draw(st.sampled_from(["google", "spring sale", None])),
        "utm_campaign": draw(st.sampled_from(["c", None])),
    }
    if event_type == "identify":
        fields["identified_user_id"] = draw(st.integers(100, 102))
    at = T0 + dt.timedelta(seconds=draw(st.integers(0, 3)), microseconds=draw(st.sampled_from([0, 1, 999_999])))
    body = events.event(
        draw(st.integers(1, 3)), event_type, session_id=draw(st.sampled_from(SESSIONS)), occurred_at=at, **fields
    )
    return {k: v for k, v in body.items() if v is not None}


def oracle(bodies: list[dict]) -> dict:
    """The tables the events make, whatever the batches: written as rules."""
    log, last_seen, identities, touch = [], {}, {}, {}
    for e in bodies:
        user, at = e["user_id"], dt.datetime.fromisoformat(e["occurred_at"])
        log.append((user, at, e["event_type"], e.get("page")))
        last_seen[user] = max(last_seen.get(user, at), at)
        if e["event_type"] == "identify":
            pair = (user, e["identified_user_id"])
            identities[pair] = max(identities.get(pair, at), at)
        key = (uuid.UUID(e["session_id"]), user)
        referrer = e.get("referrer")
        if key not in touch or at < touch[key][0]:  # the earliest; of equal times, the first to arrive
            first = (e.get("page"), referrer and REFERRERS[referrer], e.get("utm_source"), None, e.get("utm_campaign"))
            touch[key] = (at, *first)
    return {
        "log": sorted(log, key=repr),
        "last_seen": last_seen,
        "identities": identities,
        "touch": {k: v[1:] for k, v in touch.items()},
    }


def tables(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        log = conn.execute("SELECT user_id, occurred_at, event_type, page FROM streaming.event_log").fetchall()
        identities = conn.execute("SELECT anonymous_id, user_id, identified_at FROM streaming.identities").fetchall()
        touch = conn.execute(
            "SELECT session_id, user_id, landing_page, referrer_host, utm_source, utm_medium, utm_campaign "
            "FROM streaming.sessions"
        ).fetchall()
        return {
            "log": sorted(log, key=repr),
            "last_seen": dict(conn.execute("SELECT user_id, last_seen_at FROM streaming.user_last_seen").fetchall()),
            "identities": {(a, u): at for a, u, at in identities},
            "touch": {(s, u): tuple(rest) for s, u, *rest in touch},
        }


def write(dsn: str, batches: list[Batch]) -> None:
    with psycopg.connect(dsn) as conn:
        for batch in batches:
            with conn.transaction(), conn.cursor() as cur:
                write_aggregates(cur, batch)


def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(STREAMING_TABLES)}")


def batch_of(msgs: list[Record]) -> Batch:
    batch = Batch("user_events", "user_profiles", 65536)
    batch.add(msgs)
    return batch


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(product_events(), min_size=1, max_size=20), data=st.data())
def test_any_split_into_batches_writes_the_tables_of_the_whole_sequence(pipeline, bodies, data):
    """Hypothesis at Postgres' edge: events split into batches at any points, each batch written in
    its own transaction: event_log holds each event once, user_last_seen each user's latest time,
    identities each pair's latest identify, and each session the first touch of its earliest event
    (a later batch's earlier event replaces all five columns; of equal times, the first stays)."""
    truncate(pipeline.dsn)
    msgs = [Record("user_events", 0, i, events.key(b), events.encode(b)) for i, b in enumerate(bodies)]
    cuts = sorted(data.draw(st.sets(st.integers(0, len(msgs)), max_size=4)))
    write(pipeline.dsn, [batch_of(msgs[a:b]) for a, b in zip([0, *cuts], [*cuts, len(msgs)])])
    assert tables(pipeline.dsn) == oracle(bodies)


def test_a_page_holding_nul_is_counted_and_stored_escaped(pipeline):
    """The contract lets NUL through in a page; Postgres text cannot hold it: the event is counted,
    its page stored as dead letters store such bytes, and no batch is split for it."""
    truncate(pipeline.dsn)
    bodies = [events.event(1, "view", occurred_at=T0, page=p) for p in ("/a\x00b", "/plain")]
    write(pipeline.dsn, [batch_of([Record("user_events", 0, i, b"1", events.encode(b)) for i, b in enumerate(bodies)])])
    got = tables(pipeline.dsn)
    assert sorted(p for *_, p in got["log"]) == ["/a\\x00b", "/plain"]
    assert list(got["touch"].values())[0][0] in ("/a\\x00b", "/plain")


def test_no_update_without_a_later_time_leaves_no_dead_row(pipeline):
    """user_last_seen and identities change a row only for a later time: a batch with nothing newer
    leaves them, and their transaction ids, as they were."""
    truncate(pipeline.dsn)
    later = events.event(4, "identify", occurred_at=T0 + dt.timedelta(minutes=1), identified_user_id=9)
    earlier = {**later, "event_id": str(uuid.uuid4()), "occurred_at": events.rfc3339(T0)}
    write(pipeline.dsn, [batch_of([Record("user_events", 0, 0, b"4", events.encode(later))])])
    before = pipeline.query("SELECT xmin::text, written_xid::text FROM streaming.identities")
    seen_before = pipeline.query("SELECT xmin::text, last_seen_at FROM streaming.user_last_seen")
    write(pipeline.dsn, [batch_of([Record("user_events", 0, 1, b"4", events.encode(earlier))])])
    assert pipeline.query("SELECT xmin::text, written_xid::text FROM streaming.identities") == before
    assert pipeline.query("SELECT xmin::text, last_seen_at FROM streaming.user_last_seen") == seen_before


def test_reset_empties_the_product_tables_but_keeps_deleted_users(pipeline):
    """A rebuild starts from nothing but must not bring a deleted user back: streaming.deleted_users stays."""
    truncate(pipeline.dsn)
    body = events.event(5, "identify", occurred_at=T0, identified_user_id=6, page="/")
    write(pipeline.dsn, [batch_of([Record("user_events", 0, 0, b"5", events.encode(body))])])
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO streaming.deleted_users (user_id) VALUES (77) ON CONFLICT DO NOTHING")
    store = Store(pipeline.dsn, Settings().kafka_consumer_group + "_reset_test")
    try:
        store.reset({("user_events", 0): 0})
    finally:
        store.close()
    counts = pipeline.query(
        "SELECT (SELECT count(*) FROM streaming.event_log), (SELECT count(*) FROM streaming.user_last_seen), "
        "(SELECT count(*) FROM streaming.identities), (SELECT count(*) FROM streaming.deleted_users WHERE user_id = 77)"
    )
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM streaming.deleted_users WHERE user_id = 77")
    assert counts == [(0, 0, 0, 1)]
