"""The event contract: what the consumer accepts and the reason it gives for what it refuses."""

import json

import pytest

from common.contract import InvalidMessage, amount_cents, decode_event, decode_profile

VALID = {
    "schema_version": 1,
    "event_id": "5f0b7c1e-8d3a-4e0c-9a51-2f1f7d9c3b10",
    "event_type": "purchase",
    "user_id": 42,
    "session_id": "0c8e1f4a-7b2d-4a66-b1f3-9d2e5c7a8b90",
    "occurred_at": "2026-11-22T15:04:05.123Z",
    "page": "/products/17",
    "product_id": 17,
    "amount": 19.99,
    "device": "mobile",
    "country": "US",
}


def encode(**changes) -> bytes:
    event = {**VALID, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_the_design_example_is_valid():
    event = decode_event(encode(), 65536)
    assert (event.user_id, event.event_type, amount_cents(event.amount)) == (42, "purchase", 1999)


def test_unknown_fields_and_new_event_types_are_accepted():
    event = decode_event(encode(event_type="add_to_cart", amount=None, referrer="newsletter"), 65536)
    assert event.event_type == "add_to_cart"


def test_optional_fields_may_be_missing():
    event = decode_event(encode(page=..., product_id=..., amount=..., device=..., country=...), 65536)
    assert event.amount is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "Expected `object`"),
        (b'"a string"', "Expected `object`"),
        (b"\xff\xfe\x00", "malformed"),
        (encode(event_id=...), "missing required field `event_id`"),
        (encode(schema_version=2), "schema_version"),
        (encode(user_id="42"), "$.user_id"),
        (encode(user_id=0), "$.user_id"),
        (encode(user_id=-5), "$.user_id"),
        (encode(user_id=2**70), "$.user_id"),
        (encode(event_id="not-a-uuid"), "Invalid UUID"),
        (encode(session_id=17), "$.session_id"),
        (encode(occurred_at="2026-11-22 15:04:05"), "$.occurred_at"),
        (encode(occurred_at="2026-11-22T15:04:05"), "timezone"),
        (encode(occurred_at="yesterday"), "$.occurred_at"),
        (encode(event_type="Purchase"), "$.event_type"),
        (encode(event_type="x" * 51), "$.event_type"),
        (encode(event_type=""), "$.event_type"),
        (encode(amount=-1), "$.amount"),
        (encode(amount="19.99"), "$.amount"),
        (encode(event_type="view"), "only allowed on purchases"),
        (encode(country="usa"), "$.country"),
        (encode(product_id=1.5), "$.product_id"),
    ],
)
def test_contract_breaches_are_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidMessage, match=None) as info:
        decode_event(raw, 65536)
    assert reason in str(info.value)


def test_oversize_messages_are_refused_before_parsing():
    with pytest.raises(InvalidMessage, match="oversize message: 2000 bytes > limit 1000"):
        decode_event(b" " * 2000, 1000)


def test_null_value_is_refused():
    with pytest.raises(InvalidMessage, match="null value"):
        decode_event(None, 1000)


def test_profile_with_nul_in_name_is_refused():
    profile = {
        "user_id": 1,
        "name": "a\u0000b",
        "email": "a@b.c",
        "country": "US",
        "signup_date": "2024-01-01",
        "plan": "free",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(InvalidMessage, match=r"\$.name"):
        decode_profile(json.dumps(profile).encode(), 65536)


def test_amount_cents_rounds_to_the_nearest_cent():
    assert [amount_cents(x) for x in (None, 0, 19.99, 0.1 + 0.2, 1e9)] == [0, 0, 1999, 30, 100_000_000_000]
