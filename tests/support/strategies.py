"""Hypothesis strategies for the event contract's edges, shared by the unit and integration tiers."""

import datetime as dt
import json
import unicodedata

from hypothesis import strategies as st

from common.contract import AMOUNT_MAX, BIGINT_MAX, EVENT_TIME_FLOOR, REFERRER_MAX, UTM_MAX
from tests.support.events import VALID_EVENT

#: The Unicode categories the contract calls not printable (common/contract.py, NOT_PRINTABLE),
#: besides every space separator but U+0020.
NOT_PRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def printable(ch: str) -> bool:
    """The contract's printable, from the Unicode database rather than the contract's regex class."""
    category = unicodedata.category(ch)
    return ch == " " or (category not in NOT_PRINTABLE_CATEGORIES and category != "Zs")


#: A referrer's host[:port] as the contract allows it (RFC 3986's characters, no `@`).
HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~%!$&'()*+,;=:[]-")


def is_contract_url(text: str) -> bool:
    """Whether the contract takes `text` as a referrer, written as rules rather than its regex."""
    if not 1 <= len(text) <= REFERRER_MAX or not all("!" <= c <= "~" for c in text):
        return False
    scheme, sep, rest = text.partition("://")
    host = rest
    for end in "/?#":
        host = host.split(end, 1)[0]
    return (
        scheme in ("http", "https")
        and sep == "://"
        and host != ""
        and (host[0].isascii() and host[0].isalnum() or host[0] == "[")
        and set(host) <= HOST_CHARS
    )


def is_user_id(value: object) -> bool:
    """Whether the contract takes `value` as a user_id (or identified_user_id): a JSON integer in bigint's range."""
    return type(value) is int and 1 <= value <= BIGINT_MAX


def is_contract_utm(text: str) -> bool:
    """Whether the contract takes `text` as a utm_source, utm_medium or utm_campaign."""
    return 1 <= len(text) <= UTM_MAX and all(printable(c) for c in text)


# Any code point, surrogates excepted (JSON cannot carry a lone one as UTF-8; an escaped one is malformed).
any_char = st.characters(exclude_categories=("Cs",))
#: A referrer: from a browser's kind of URL to anything that looks like one, lengths around the bound.
urls = st.builds(
    lambda scheme, sep, host, port, tail, pad: scheme + sep + host + port + tail + pad,
    st.sampled_from(["https", "http", "HTTPS", "ftp", "javascript", "", "https:"]),
    st.sampled_from(["://", "://", "://", ":", ":/", "//", ""]),
    st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,30}\Z")
    | st.text(alphabet=st.sampled_from(sorted(HOST_CHARS) + ["@", " "]))
    | st.text(any_char, max_size=8),
    st.sampled_from(["", ":8080", ":", "@evil.example"]),
    st.sampled_from(["", "/", "/a/b?c=d&e=f#g", "?q=1", "#top", "/ü/€/😀", "/a b", "/\t", "/\u200b", "/\u00a0"])
    | st.text(any_char, max_size=20).map(lambda t: "/" + t),
    st.sampled_from([0, 0, REFERRER_MAX - 30, REFERRER_MAX - 8, REFERRER_MAX]).map(
        lambda n: "/" + "a" * n if n else ""
    ),
)
#: A utm_* value: words, anything printable or not, lengths around the bound.
utm_texts = (
    st.sampled_from(["google", "cpc", "spring sale 2026", "ü€😀", "a" * UTM_MAX, "a" * (UTM_MAX + 1), ""])
    | st.sampled_from([" ", "a\tb", "a\nb", "\u202egoogle", "news\u200bletter", "\u00a0", "\x7f", "\ue000"])
    | st.text(any_char, max_size=UTM_MAX + 10)
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=UTM_MAX - 2, max_size=UTM_MAX + 2)
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
)
# Values at and around each field's bounds, plus anything at all.
edge_values = {
    "schema_version": st.sampled_from([1, 0, 2, "1", 1.0, True]),
    "event_type": st.sampled_from(
        ["view", "click", "purchase", "identify", "a" * 50, "a" * 51, "view\n", "Vi", "a_1", "_a", ""]
    )
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
    "referrer": urls | st.none(),
    "utm_source": utm_texts | st.none(),
    "utm_medium": utm_texts | st.none(),
    "utm_campaign": utm_texts | st.none(),
    "identified_user_id": st.sampled_from([1, 0, -1, BIGINT_MAX, BIGINT_MAX + 1, None, "42", True]) | st.integers(),
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
