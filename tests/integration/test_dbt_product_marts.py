"""dbt's product-analytics marts (funnel_progress, funnel_conversion, daily_active_users,
retention_cohorts) on a real Postgres equal what the test computes from the events, identities
and deletions it wrote (dbt_harness: Product and the oracles, written from the marts' definitions),
after a full build and after incremental ones: late and out-of-order events, a first identify, a
re-identification, deleted users; and an incremental build equals a full refresh."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.dbt_harness import (
    Event,
    Product,
    Streaming,
    differences,
    events,
    expected_product_marts,
    product_marts,
)

NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
USERS = range(1, 21)
ANONYMOUS = range(1001, 1011)
# These marts and what they read: the other marts' deletion and identity are tested elsewhere.
MINE = ("--select", "+funnel_conversion", "+daily_active_users", "+retention_cohorts")


@pytest.fixture(scope="module")
def product(dsn):
    streaming = Streaming(dsn)
    yield Product(dsn, streaming)
    streaming.store.close()


def assert_matches(dsn: str, product: Product) -> None:
    diff = differences(product_marts(dsn), expected_product_marts(product))
    assert diff == {}, diff


def test_first_build_computes_every_product_mart(dsn, dbt, product):
    rng = random.Random(19)
    product.write(events(rng, 1500, USERS, NOW - dt.timedelta(days=4), dt.timedelta(days=4)))
    product.write(events(rng, 300, ANONYMOUS, NOW - dt.timedelta(days=2), dt.timedelta(days=2)))
    product.identify(1001, 1, NOW - dt.timedelta(days=1))
    dbt("build", "--full-refresh", *MINE)
    assert_matches(dsn, product)
    got = product_marts(dsn)
    assert any(r[0] == 3 for r in got["funnel_progress"].values()), "no user completed the funnel"
    assert ("purchase", 1001) not in got["funnel_progress"] and ("purchase", 1002) in got["funnel_progress"]


def test_steps_count_only_in_order_within_the_window(dsn, dbt, product):
    s = uuid.UUID(int=77, version=4)
    t = NOW - dt.timedelta(hours=6)
    product.write(
        [
            Event(501, "view", s, t),
            Event(501, "purchase", s, t + dt.timedelta(minutes=1)),  # no click: step 1 only
            Event(502, "view", s, t),
            Event(502, "click", s, t + dt.timedelta(minutes=10)),
            Event(502, "purchase", s, t + dt.timedelta(minutes=31)),  # outside the window
            Event(503, "click", s, t),
            Event(503, "view", s, t + dt.timedelta(minutes=1)),
            Event(503, "click", s, t + dt.timedelta(minutes=2)),
            Event(503, "purchase", s, t + dt.timedelta(minutes=30)),  # at the window's edge
        ]
    )
    dbt("build", *MINE)
    assert_matches(dsn, product)
    got = product_marts(dsn)["funnel_progress"]
    assert [got[("purchase", u)][0] for u in (501, 502, 503)] == [1, 2, 3]


def test_late_out_of_order_events_and_a_reidentification(dsn, dbt, product):
    rng = random.Random(20)
    fresh = events(rng, 400, [*USERS, *ANONYMOUS], NOW - dt.timedelta(minutes=30), dt.timedelta(minutes=30))
    late = events(rng, 300, [*USERS, *ANONYMOUS], NOW - dt.timedelta(days=3), dt.timedelta(days=3))
    mixed = fresh + late
    rng.shuffle(mixed)
    product.write(mixed[:350])
    product.identify(1002, 2, NOW - dt.timedelta(hours=1))
    dbt("build", *MINE)
    assert_matches(dsn, product)
    product.write(mixed[350:])
    product.identify(1001, 3, NOW)  # re-identified: its history moves from user 1 to user 3
    dbt("build", *MINE)
    assert_matches(dsn, product)


def test_deleted_users_leave_every_product_mart(dsn, dbt, product):
    product.delete(3)  # a known user with an anonymous id counted under it
    product.delete(1002)  # an anonymous id counted under user 2
    dbt("build", *MINE)
    assert_matches(dsn, product)
    with psycopg.connect(dsn) as conn:
        left = conn.execute(
            """SELECT (SELECT count(*) FROM analytics.funnel_progress WHERE user_id IN (3, 1002))
                    + (SELECT count(*) FROM analytics.int_user_activity_days
                       WHERE user_id IN (3, 1002) OR counted_under IN (3, 1002))"""
        ).fetchone()[0]
    assert left == 0
    # a deleted user's later events count again
    product.write(events(random.Random(21), 20, [3], NOW - dt.timedelta(minutes=5), dt.timedelta(minutes=5)))
    dbt("build", *MINE)
    assert_matches(dsn, product)


def test_incremental_product_marts_equal_a_full_refresh(dsn, dbt, product):
    incremental = product_marts(dsn)
    dbt("build", "--full-refresh", *MINE)
    assert differences(product_marts(dsn), incremental) == {}


operation = st.one_of(
    st.tuples(st.just("events"), st.integers(0, 2**32), st.integers(1, 120)),
    st.tuples(st.just("identify"), st.sampled_from(list(ANONYMOUS)), st.sampled_from(list(USERS))),
    st.tuples(st.just("delete"), st.sampled_from([*USERS[:5], *ANONYMOUS[:5]])),
    st.tuples(st.just("build")),
)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(operation, min_size=2, max_size=8))
def test_random_batches_identities_and_deletions_build_incrementally_as_in_full(dsn, dbt, product, ops):
    """Random event batches (late and out of order: anywhere in the last 3 days), identifies,
    re-identifications and deletions, with incremental builds between them at random: after a last
    build the marts equal the oracle, and a full refresh changes nothing."""
    clock = NOW
    for op in ops:
        if op[0] == "events":
            rng = random.Random(op[1])
            product.write(events(rng, op[2], [*USERS, *ANONYMOUS], NOW - dt.timedelta(days=3), dt.timedelta(days=3)))
        elif op[0] == "identify":
            clock += dt.timedelta(seconds=1)
            product.identify(op[1], op[2], clock)
        elif op[0] == "delete":
            product.delete(op[1])
        else:
            dbt("build", *MINE)
    dbt("build", *MINE)
    assert_matches(dsn, product)
    incremental = product_marts(dsn)
    dbt("build", "--full-refresh", *MINE)
    assert differences(product_marts(dsn), incremental) == {}
