"""The event contract: what the consumer accepts, the reason it gives for what it refuses, and its
bounds, at their edges and under generated hostile input (Hypothesis)."""

import datetime as dt
import json
import re
import sys
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.contract import (
    AMOUNT_MAX,
    BIGINT_MAX,
    EVENT_TIME_FLOOR,
    NOT_PRINTABLE,
    REFERRER_MAX,
    UTM_MAX,
    Event,
    InvalidMessage,
    Reason,
    UserProfile,
    amount_cents,
    decode_event,
    decode_profile,
)
from tests.support.events import VALID_EVENT as VALID
from tests.support.strategies import (
    edge_values,
    hostile_events,
    is_contract_url,
    is_contract_utm,
    json_values,
    printable,
    urls,
    utm_texts,
)

NOW = dt.datetime(2026, 11, 22, 15, 10, tzinfo=dt.UTC)
LATEST = NOW + dt.timedelta(minutes=5)
LATEST_TS = LATEST.timestamp()

PROFILE = {
    "user_id": 1,
    "name": "Ada",
    "email": "a@b.c",
    "country": "US",
    "signup_date": "2024-01-01",
    "plan": "free",
    "updated_at": "2026-01-01T00:00:00Z",
}


def encode(**changes) -> bytes:
    event = {**VALID, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def encode_profile(**changes) -> bytes:
    return json.dumps({**PROFILE, **changes}).encode()


def test_the_design_example_is_valid():
    event = decode_event(encode(), 65536, LATEST_TS)[0]
    assert (event.user_id, event.event_type, amount_cents(event.amount)) == (42, "purchase", 1999)


def test_unknown_fields_and_new_event_types_are_accepted():
    event, _ = decode_event(encode(event_type="add_to_cart", amount=None, gclid="Cj0KCQ\n"), 65536, LATEST_TS)
    assert event.event_type == "add_to_cart"


def test_optional_fields_may_be_missing():
    absent = dict.fromkeys(["page", "product_id", "amount", "device", "country", "referrer"], ...)
    event, _ = decode_event(encode(**absent, utm_source=..., utm_medium=..., utm_campaign=...), 65536, LATEST_TS)
    assert (event.amount, event.referrer, event.utm_source, event.identified_user_id) == (None, None, None, None)


def test_the_new_optional_fields_may_be_null():
    nulls = dict.fromkeys(["referrer", "utm_source", "utm_medium", "utm_campaign", "identified_user_id"])
    event, _ = decode_event(encode(**nulls), 65536, LATEST_TS)
    assert (event.referrer, event.utm_campaign, event.identified_user_id) == (None, None, None)


@pytest.mark.parametrize(
    ("raw", "reason", "text"),
    [
        (b"not json", Reason.MALFORMED, "malformed"),
        (b"[1, 2]", Reason.CONTRACT, "Expected `object`"),
        (b'"a string"', Reason.CONTRACT, "Expected `object`"),
        (b"\xff\xfe\x00", Reason.MALFORMED, "malformed"),
        (encode(event_id=...), Reason.CONTRACT, "missing required field `event_id`"),
        (encode(schema_version=2), Reason.CONTRACT, "schema_version"),
        (encode(user_id="42"), Reason.CONTRACT, "$.user_id"),
        (encode(user_id=0), Reason.CONTRACT, "$.user_id"),
        (encode(user_id=-5), Reason.CONTRACT, "$.user_id"),
        (encode(user_id=2**70), Reason.CONTRACT, "$.user_id"),
        (encode(event_id="not-a-uuid"), Reason.CONTRACT, "Invalid UUID"),
        (encode(session_id=17), Reason.CONTRACT, "$.session_id"),
        (encode(occurred_at="2026-11-22 15:04:05"), Reason.CONTRACT, "$.occurred_at"),
        (encode(occurred_at="2026-11-22T15:04:05"), Reason.CONTRACT, "timezone"),
        (encode(occurred_at="yesterday"), Reason.CONTRACT, "$.occurred_at"),
        (encode(event_type="Purchase"), Reason.CONTRACT, "$.event_type"),
        (encode(event_type="x" * 51), Reason.CONTRACT, "$.event_type"),
        (encode(event_type=""), Reason.CONTRACT, "$.event_type"),
        (encode(amount=-1), Reason.CONTRACT, "$.amount"),
        (encode(amount=AMOUNT_MAX + 0.01), Reason.CONTRACT, "$.amount"),
        (encode(amount="19.99"), Reason.CONTRACT, "$.amount"),
        (encode(event_type="view"), Reason.CONTRACT, "only allowed on purchases"),
        (encode(country="usa"), Reason.CONTRACT, "$.country"),
        (encode(product_id=1.5), Reason.CONTRACT, "$.product_id"),
        (encode(referrer="newsletter"), Reason.CONTRACT, "$.referrer"),
        (encode(referrer="https://example.com/" + "a" * (REFERRER_MAX - 19)), Reason.CONTRACT, "$.referrer"),
        (encode(referrer=""), Reason.CONTRACT, "$.referrer"),
        (encode(referrer=7), Reason.CONTRACT, "$.referrer"),
        (encode(utm_source=""), Reason.CONTRACT, "$.utm_source"),
        (encode(utm_medium="a" * (UTM_MAX + 1)), Reason.CONTRACT, "$.utm_medium"),
        (encode(utm_campaign="spring\nsale"), Reason.CONTRACT, "$.utm_campaign"),
        (encode(utm_campaign=["spring"]), Reason.CONTRACT, "$.utm_campaign"),
        (encode(identified_user_id=7), Reason.CONTRACT, "only allowed on identify events, got it on 'purchase'"),
        (encode(event_type="identify", amount=None), Reason.CONTRACT, "identified_user_id is required on identify"),
        (encode(event_type="identify", amount=None, identified_user_id=None), Reason.CONTRACT, "required on identify"),
        (encode(event_type="identify", amount=None, identified_user_id=0), Reason.CONTRACT, "$.identified_user_id"),
        (encode(event_type="identify", amount=None, identified_user_id="7"), Reason.CONTRACT, "$.identified_user_id"),
        (encode(event_type="identify", identified_user_id=7), Reason.CONTRACT, "only allowed on purchases"),
    ],
)
def test_contract_breaches_are_refused_with_a_reason(raw, reason, text):
    with pytest.raises(InvalidMessage) as info:
        decode_event(raw, 65536, LATEST_TS)
    assert (info.value.reason, text in str(info.value)) == (reason, True)


@pytest.mark.parametrize(
    "changes",
    [{"event_type": "view\n", "amount": None}, {"country": "US\n"}, {"event_type": "\nview", "amount": None}],
)
def test_patterns_match_the_whole_string_so_a_trailing_newline_is_refused(changes):
    with pytest.raises(InvalidMessage, match="regex"):
        decode_event(encode(**changes), 65536, LATEST_TS)


@pytest.mark.parametrize("field", ["plan", "country"])
def test_profile_patterns_match_the_whole_string(field):
    value = {"plan": "pro\n", "country": "DE\n"}[field]
    with pytest.raises(InvalidMessage, match=field):
        decode_profile(encode_profile(**{field: value}), 65536, LATEST_TS)


@pytest.mark.parametrize(
    "occurred_at",
    ["9999-12-31T23:59:59-01:00", "2026-11-22T15:15:00.001Z", "1999-12-31T23:59:59.999Z", "2000-01-01T00:30:00+01:00"],
)
def test_event_times_outside_the_floor_and_the_future_skew_are_refused(occurred_at):
    with pytest.raises(InvalidMessage) as info:
        decode_event(encode(occurred_at=occurred_at), 65536, LATEST_TS)
    assert info.value.reason == Reason.EVENT_TIME


@pytest.mark.parametrize("occurred_at", ["2000-01-01T00:00:00Z", "2026-11-22T15:15:00Z", "2026-11-22T20:15:00+05:00"])
def test_event_times_on_the_bounds_are_accepted(occurred_at):
    assert decode_event(encode(occurred_at=occurred_at), 65536, LATEST_TS)[0].occurred_at == dt.datetime.fromisoformat(
        occurred_at
    )


def test_a_profile_dated_in_the_future_is_refused():
    with pytest.raises(InvalidMessage, match="updated_at .* is in the future"):
        decode_profile(encode_profile(updated_at="2030-01-01T00:00:00Z"), 65536, LATEST_TS)


def test_oversize_messages_are_refused_before_parsing():
    with pytest.raises(InvalidMessage, match="oversize message: 2000 bytes > limit 1000"):
        decode_event(b" " * 2000, 1000, LATEST_TS)


def test_json_nested_deeper_than_the_stack_is_refused_as_malformed():
    with pytest.raises(InvalidMessage, match="nested too deeply"):
        decode_event(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 65536, LATEST_TS)


def test_a_string_that_is_not_utf8_is_refused_as_malformed():
    raw = encode(page="/products/17").replace(b"/products/17", b"\x80/products/17")
    with pytest.raises(InvalidMessage, match="not UTF-8") as refused:
        decode_event(raw, 65536, LATEST_TS)
    assert refused.value.reason == Reason.MALFORMED
    with pytest.raises(InvalidMessage, match="not UTF-8"):
        decode_profile(encode_profile().replace(b'"name": "', b'"name": "\xff'), 65536, LATEST_TS)


def test_null_value_is_refused():
    with pytest.raises(InvalidMessage, match="null value"):
        decode_event(None, 1000, LATEST_TS)


def test_profile_with_nul_in_name_is_refused():
    with pytest.raises(InvalidMessage, match=r"\$.name"):
        decode_profile(encode_profile(name="a\u0000b"), 65536, LATEST_TS)


@pytest.mark.parametrize(
    "referrer",
    [
        "https://www.google.com/",
        "http://localhost:8090/shop/?utm_source=x#top",
        "https://example.com",
        "https://[2001:db8::1]:8443/a",
        "https://xn--caf-dma.example/men%C3%BC?q=a+b&r=%F0%9F%98%80#top",
        "https://example.com/!$&'()*+,;=:@~-._[]{}|^`\\\"<>",
        "https://example.com/" + "a" * (REFERRER_MAX - 20),
    ],
)
def test_referrers_that_are_absolute_http_urls_are_accepted(referrer):
    assert decode_event(encode(referrer=referrer), 65536, LATEST_TS)[0].referrer == referrer


@pytest.mark.parametrize(
    "referrer",
    [
        "ftp://example.com/",
        "HTTPS://example.com/",
        "javascript:alert(1)",
        "//example.com/",
        "/shop/",
        "https://",
        "https:///path",
        "https://:8080/",
        "https://user:pass@example.com/",
        "https://evil.example@google.com/",
        "https://exa mple.com/",
        "https://café.example/",
        "https://example.com/a b",
        "https://example.com/\n",
        "https://example.com/a\u200bb",
        "https://example.com/\u202e",
        "https://example.com/\u00a0",
        "https://example.com/ü",
        "https://example.com/😀",
        "https://example.com/\x7f",
        " https://example.com/",
    ],
)
def test_referrers_that_are_not_absolute_http_urls_are_refused(referrer):
    with pytest.raises(InvalidMessage, match=r"\$\.referrer") as refused:
        decode_event(encode(referrer=referrer), 65536, LATEST_TS)
    assert refused.value.reason == Reason.CONTRACT


@pytest.mark.parametrize(
    "value", ["google", "cpc", "spring sale 2026", " padded ", "ü€😀", "春のセール", "a" * UTM_MAX, "-", "\U0001fae8"]
)
def test_utm_values_of_printable_text_within_the_bound_are_accepted(value):
    event = decode_event(encode(utm_source=value, utm_medium=value, utm_campaign=value), 65536, LATEST_TS)[0]
    assert (event.utm_source, event.utm_medium, event.utm_campaign) == (value, value, value)


@pytest.mark.parametrize("field", ["utm_source", "utm_medium", "utm_campaign"])
@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * (UTM_MAX + 1),
        "a\tb",
        "a\r",
        "\u202egoogle",
        "news\u200bletter",
        "\u00a0",
        "\ue000",
        "\x85",
        "\U000e0041",
    ],
)
def test_utm_values_that_are_empty_too_long_or_not_printable_are_refused(field, value):
    with pytest.raises(InvalidMessage, match=rf"\$\.{field}") as refused:
        decode_event(encode(**{field: value}), 65536, LATEST_TS)
    assert refused.value.reason == Reason.CONTRACT


@pytest.mark.parametrize("identified", [1, 42, BIGINT_MAX])
def test_an_identify_event_names_the_known_user_of_its_anonymous_user_id(identified):
    event, _ = decode_event(encode(event_type="identify", amount=None, identified_user_id=identified), 65536, LATEST_TS)
    assert (event.event_type, event.user_id, event.identified_user_id) == ("identify", 42, identified)


@pytest.mark.parametrize("identified", [0, -1, BIGINT_MAX + 1, 1.5, True])
def test_an_identified_user_id_out_of_bounds_is_refused(identified):
    with pytest.raises(InvalidMessage, match=r"\$\.identified_user_id"):
        decode_event(encode(event_type="identify", amount=None, identified_user_id=identified), 65536, LATEST_TS)


def test_the_not_printable_class_is_the_unicode_databases():
    """NOT_PRINTABLE is written by hand (Python's re has no \\p{...}): every assigned code point is
    in it exactly when the running Python's Unicode database says it is not printable (a character
    a newer Python assigns to a refused category fails this, until the class lists it)."""
    one = re.compile(rf"[^{NOT_PRINTABLE}]")
    wrong = [
        f"U+{c:04X} {unicodedata.category(chr(c))}"
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) != "Cn" and (one.fullmatch(chr(c)) is not None) != printable(chr(c))
    ]
    assert wrong == [], f"NOT_PRINTABLE disagrees with Unicode {unicodedata.unidata_version}: {wrong[:20]}"


def test_amount_cents_rounds_to_the_nearest_cent():
    assert [amount_cents(x) for x in (None, 0, 19.99, 0.1 + 0.2, 1e9)] == [0, 0, 1999, 30, 100_000_000_000]


# --- generated input ---------------------------------------------------------------------------


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_events())
def test_any_message_is_an_event_within_every_bound_or_refused_with_a_reason(raw):
    try:
        event, ts = decode_event(raw, 65536, LATEST_TS)
    except InvalidMessage as exc:
        assert exc.reason in Reason and str(exc)
        return
    assert isinstance(event, Event)
    assert EVENT_TIME_FLOOR <= event.occurred_at <= LATEST and ts == event.occurred_at.timestamp()
    assert 1 <= event.user_id <= BIGINT_MAX
    assert event.amount is None or (0 <= event.amount <= AMOUNT_MAX and event.event_type == "purchase")
    assert len(event.event_type) <= 50 and event.event_type.isascii() and "\n" not in event.event_type
    assert event.country is None or (len(event.country) == 2 and event.country.isupper())
    assert event.referrer is None or is_contract_url(event.referrer)
    assert all(v is None or is_contract_utm(v) for v in (event.utm_source, event.utm_medium, event.utm_campaign))
    assert (event.identified_user_id is not None) == (event.event_type == "identify")
    assert event.identified_user_id is None or 1 <= event.identified_user_id <= BIGINT_MAX


@settings(max_examples=500)
@given(urls)
def test_a_referrer_is_accepted_exactly_when_it_is_an_absolute_http_url_within_the_bound(referrer):
    try:
        event, _ = decode_event(encode(referrer=referrer), 65536, LATEST_TS)
    except InvalidMessage as exc:
        assert (exc.reason, "$.referrer" in str(exc), is_contract_url(referrer)) == (Reason.CONTRACT, True, False)
        return
    assert event.referrer == referrer and is_contract_url(referrer)


@settings(max_examples=300)
@given(st.sampled_from(["utm_source", "utm_medium", "utm_campaign"]), utm_texts)
def test_a_utm_value_is_accepted_exactly_when_it_is_printable_and_within_the_bound(field, value):
    try:
        event, _ = decode_event(encode(**{field: value}), 65536, LATEST_TS)
    except InvalidMessage as exc:
        assert (exc.reason, f"$.{field}" in str(exc), is_contract_utm(value)) == (Reason.CONTRACT, True, False)
        return
    assert getattr(event, field) == value and is_contract_utm(value)


@settings(max_examples=300)
@given(
    st.sampled_from(["identify", "view", "purchase", "identity"]),
    edge_values["identified_user_id"] | json_values | st.just(...),
)
def test_identified_user_id_is_accepted_exactly_on_identify_events_within_user_ids_bounds(event_type, identified):
    raw = encode(
        event_type=event_type, amount=19.99 if event_type == "purchase" else None, identified_user_id=identified
    )
    if identified is ... or identified is None:  # absent or null: right on any type but identify
        want = event_type != "identify"
    else:
        want = event_type == "identify" and type(identified) is int and 1 <= identified <= BIGINT_MAX
    try:
        event, _ = decode_event(raw, 65536, LATEST_TS)
    except InvalidMessage as exc:
        assert (exc.reason, want) == (Reason.CONTRACT, False) and "identif" in str(exc)
        return
    assert want and event.identified_user_id == (None if identified is ... else identified)


@settings(max_examples=300)
@given(st.binary(max_size=300) | st.builds(json.dumps, json_values).map(str.encode))
def test_arbitrary_bytes_never_raise_anything_but_invalid_message(raw):
    for decode in (decode_event, decode_profile):
        try:
            decode(raw, 256, LATEST_TS)
        except InvalidMessage:
            pass


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(max_size=400) | json_values,
            "plan": st.from_regex(r"[a-z][a-z0-9_\n]{0,55}") | json_values,
            "updated_at": edge_values["occurred_at"],
            "signup_date": st.dates().map(str) | json_values,
            "user_id": edge_values["user_id"],
        },
    )
)
def test_any_profile_is_storable_or_refused(changes):
    try:
        profile = decode_profile(encode_profile(**changes), 65536, LATEST_TS)
    except InvalidMessage:
        return
    assert isinstance(profile, UserProfile)
    assert EVENT_TIME_FLOOR <= profile.updated_at <= LATEST
    assert "\x00" not in profile.name and 1 <= len(profile.name) <= 320
    assert profile.plan.isascii() and "\n" not in profile.plan
