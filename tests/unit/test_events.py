"""The producer's event generation: contract-valid, keyed by user, reproducible from a seed."""

import datetime as dt
import json
import time
import uuid
from collections import Counter

from common.contract import decode_event, decode_profile
from kafka_producer.events import CAMPAIGNS, REFERRERS, EventGenerator, uuid4_text

EPOCH = dt.datetime(2026, 11, 22, tzinfo=dt.UTC).timestamp()
LATEST = dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()  # the events' arrival, a day later at most


def test_every_generated_event_follows_the_contract_and_its_key_is_the_user_id():
    gen = EventGenerator(users=50, seed=1)
    for i in range(5000):
        key, value = gen.event(EPOCH + i / 1000)
        event, _ = decode_event(value, 65536, LATEST)
        assert key == str(event.user_id).encode()
        assert 1 <= event.user_id <= 50


def test_same_seed_and_clock_give_byte_identical_events():
    a, b = EventGenerator(users=20, seed=7), EventGenerator(users=20, seed=7)
    assert [a.event(EPOCH + i) for i in range(500)] == [b.event(EPOCH + i) for i in range(500)]


def test_different_seeds_give_different_events():
    a, b = EventGenerator(users=20, seed=7), EventGenerator(users=20, seed=8)
    assert [a.event(EPOCH) for _ in range(50)] != [b.event(EPOCH) for _ in range(50)]


def test_event_mix_is_mostly_views_with_some_purchases():
    gen = EventGenerator(users=100, seed=3)
    types = Counter(json.loads(gen.event(EPOCH)[1])["event_type"] for _ in range(20000))
    assert types["view"] > types["click"] > types["purchase"] > 0.02 * 20000


def test_a_new_sessions_first_event_alone_says_where_the_visit_came_from():
    """A fifth of the sessions from a referrer, a tenth from a campaign (every utm_* field), the rest
    direct; later events of a session carry none (the marts count a session's first touch)."""
    gen = EventGenerator(users=200, seed=5)
    first_seen: dict[str, dict] = {}
    touches: Counter = Counter()
    for _ in range(40000):
        event = json.loads(gen.event(EPOCH)[1])
        touch = {k: event[k] for k in ("referrer", "utm_source", "utm_medium", "utm_campaign") if k in event}
        if event["session_id"] in first_seen:
            assert not touch, event
            continue
        first_seen[event["session_id"]] = touch
        if "referrer" in touch:
            assert touch == {"referrer": touch["referrer"]} and touch["referrer"] in REFERRERS
            touches["referrer"] += 1
        elif touch:
            assert (touch["utm_source"], touch["utm_medium"], touch["utm_campaign"]) in CAMPAIGNS
            touches["campaign"] += 1
    sessions = sum(1 for t in first_seen.values()) - 200  # each user's first session starts untouched
    assert 0.15 < touches["referrer"] / sessions < 0.25 and 0.06 < touches["campaign"] / sessions < 0.14


def test_only_purchases_carry_an_amount():
    gen = EventGenerator(users=10, seed=4)
    for _ in range(2000):
        event = json.loads(gen.event(EPOCH)[1])
        assert (event["amount"] is not None) == (event["event_type"] == "purchase")


def test_occurred_at_is_the_given_clock_in_utc_with_milliseconds():
    gen = EventGenerator(users=1, seed=1)
    event = json.loads(gen.event(EPOCH + 1.2345)[1])
    assert event["occurred_at"] == "2026-11-22T00:00:01.234Z"


def test_uuid4_text_is_a_valid_version_4_uuid():
    for bits in (0, 2**128 - 1, 123456789):
        value = uuid.UUID(uuid4_text(bits))
        assert (value.version, value.variant) == (4, uuid.RFC_4122)


def test_profiles_follow_the_contract_one_per_user_and_are_reproducible():
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    profiles = EventGenerator(users=30, seed=5).profiles(at)
    assert [decode_profile(v, 65536, time.time()).user_id for _, v in profiles] == list(range(1, 31))
    assert profiles == EventGenerator(users=30, seed=5).profiles(at)


def test_event_ids_are_unique_version_4_uuids():
    gen = EventGenerator(users=10, seed=9)
    ids = [uuid.UUID(json.loads(gen.event(EPOCH)[1])["event_id"]) for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert {(i.version, i.variant) for i in ids} == {(4, uuid.RFC_4122)}
