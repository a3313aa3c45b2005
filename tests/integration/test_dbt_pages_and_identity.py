"""The product-analytics marts and identity stitching under generated histories (Hypothesis):
batches of events with pages and first touches, late events earlier than a session's first (the
session moves to another source), identify events naming one known user then another (the latest
wins), and deleted users (who may come back with new events), with incremental builds in between.
After every build each mart equals its Python oracle (tests/integration/dbt_harness.py), and at
the end the incremental marts equal a full refresh."""

from __future__ import annotations

import datetime as dt
import random
import uuid

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.dbt_harness import Event, Streaming, differences, marts, product_events

NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
USERS = range(1, 13)
KNOWN = range(101, 104)
# The marts this module checks, and the models they read (dbt run, without tests: the tests of
# every model run in test_dbt_models.py).
SELECT = ["+top_pages", "+traffic_sources", "+user_engagement", "+user_event_summary", "+purchase_conversion_by_user"]
CHECKED = (
    "top_pages",
    "traffic_sources",
    "user_engagement",
    "user_event_summary",
    "purchase_conversion_by_user",
    "sessions",
)


step = st.one_of(
    st.tuples(st.just("events"), st.integers(1, 120)),
    st.tuples(st.just("late"), st.integers(1, 5)),
    st.tuples(st.just("identify"), st.sampled_from(USERS), st.sampled_from(KNOWN)),
    st.tuples(st.just("delete"), st.sets(st.sampled_from([*USERS, *KNOWN]), min_size=1, max_size=2)),
    st.tuples(st.just("build")),
)


def apply(streaming: Streaming, rng: random.Random, sessions: dict, op: tuple, clock: list) -> None:
    kind = op[0]
    if kind == "events":
        streaming.write(
            product_events(rng, op[1], USERS, NOW - dt.timedelta(hours=1), dt.timedelta(hours=1), sessions, KNOWN)
        )
    elif kind == "late":
        # events earlier than their session's first, with a first touch of their own
        firsts: dict = {}
        for e in streaming.events:
            key = (e.session_id, e.user_id)
            firsts[key] = min(firsts.get(key, e.occurred_at), e.occurred_at)
        keys = sorted(firsts, key=str)
        late = []
        for key in rng.sample(keys, min(op[1], len(keys))):
            late.append(
                Event(
                    key[1],
                    "view",
                    key[0],
                    firsts[key] - dt.timedelta(seconds=rng.randint(1, 600)),
                    page="/late",
                    referrer=rng.choice([None, "https://late.example/"]),
                    utm_source=rng.choice([None, "late"]),
                )
            )
        streaming.write(late)
    elif kind == "identify":
        clock[0] += dt.timedelta(seconds=1)  # later than any identify before: this one wins
        session = uuid.UUID(int=rng.getrandbits(128), version=4)
        streaming.write([Event(op[1], "identify", session, clock[0], identified_user_id=op[2])])
    elif kind == "delete":
        streaming.delete_users(op[1])


def assert_checked_marts_match(dsn: str, streaming: Streaming) -> None:
    want = {name: rows for name, rows in streaming.expected().items() if name in CHECKED}
    diff = differences(marts(dsn, CHECKED), want)
    assert diff == {}, diff


# No shrinking: each step costs a dbt run; a failure is reported as generated, with its seed.
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(seed=st.integers(0, 2**32 - 1), steps=st.lists(step, min_size=3, max_size=7))
def test_incremental_builds_equal_the_oracle_and_a_full_refresh(dsn, dbt, seed, steps):
    """Each example starts from empty tables and a build in full, then applies its steps; a
    build follows every step a build did not, so that at least a change lies between builds."""
    streaming = Streaming(dsn)
    try:
        rng, sessions = random.Random(seed), {}
        clock = [NOW - dt.timedelta(minutes=30)]
        streaming.write(
            product_events(rng, 80, USERS, NOW - dt.timedelta(hours=2), dt.timedelta(hours=1), sessions, KNOWN)
        )
        dbt("run", "--full-refresh", "--select", *SELECT)
        assert_checked_marts_match(dsn, streaming)
        for op in [*steps, ("build",)]:
            if op[0] == "build":
                dbt("run", "--select", *SELECT)
                assert_checked_marts_match(dsn, streaming)
            else:
                apply(streaming, rng, sessions, op, clock)
        incremental = marts(dsn, CHECKED)
        dbt("run", "--full-refresh", "--select", *SELECT)
        assert differences(marts(dsn, CHECKED), incremental) == {}
    finally:
        streaming.store.close()
