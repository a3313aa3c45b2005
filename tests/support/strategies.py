"""Hypothesis strategies for the event contract's edges, shared by the unit and integration tiers."""

import datetime as dt
import json

from hypothesis import strategies as st

from common.contract import AMOUNT_MAX, BIGINT_MAX, EVENT_TIME_FLOOR
from tests.support.events import VALID_EVENT

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
)
# Values at and around each field's bounds, plus anything at all.
edge_values = {
    "schema_version": st.sampled_from([1, 0, 2, "1", 1.0, True]),
    "event_type": st.sampled_from(["view", "click", "purchase", "a" * 50, "a" * 51, "view\n", "Vi", "a_1", "_a", ""])
    | st.from_regex(r"\A[a-z][a-z0-9_]{0,60}\Z"),
    "user_id": st.sampled_from([1, 0, -1, BIGINT_MAX, BIGINT_MAX + 1, 2**64]) | st.integers(),
    "occurred_at": st.datetimes(
        timezones=st.timezones() | st.just(dt.UTC),
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
    ).map(lambda d: d.isoformat())
    | st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+14:00", EVENT_TIME_FLOOR.isoformat()]),
    "amount": st.sampled_from([0, 0.001, AMOUNT_MAX, AMOUNT_MAX + 1, -0.0, 1e308, None]) | st.floats(allow_nan=False),
    "country": st.sampled_from(["US", "us", "USA", "US\n", None]),
}


@st.composite
def hostile_events(draw) -> bytes:
    event = dict(VALID_EVENT)
    for field, values in edge_values.items():
        if draw(st.booleans()):
            event[field] = draw(values | json_values)
    if draw(st.booleans()):
        event[draw(st.sampled_from(list(VALID_EVENT)))] = draw(json_values)
    raw = json.dumps(event).encode()
    if draw(st.integers(0, 9)) == 0:  # byte-level damage: cut, flipped or stray bytes
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8)) + raw[cut + draw(st.integers(0, 3)) :]
    return raw
