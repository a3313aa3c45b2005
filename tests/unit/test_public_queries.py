"""superset/public_queries.py: what an anonymous chart-data request may differ in from the saved chart
(the rules alone; tests/e2e/test_public_view.py and test_public_answers.py send the requests
through Superset). The saved query contexts are the dashboard's own (superset/dashboards/charts)."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_compose import ROOT

spec = importlib.util.spec_from_file_location("public_queries", ROOT / "superset" / "public_queries.py")
rules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rules)

#: A normalised saved query (a QueryObject's to_dict() plus time range, offsets and annotations).
SAVED = {
    "apply_fetch_values_predicate": False,
    "columns": ["minute", "event_type"],
    "extras": {"having": "", "where": "", "time_grain_sqla": "PT1M"},
    "filter": [],
    "from_dttm": None,
    "to_dttm": None,
    "granularity": None,
    "is_rowcount": False,
    "is_timeseries": False,
    "metrics": ["events"],
    "order_desc": True,
    "orderby": [["events", False]],
    "post_processing": [{"operation": "pivot", "options": {"index": ["minute"], "columns": ["event_type"]}}],
    "row_limit": 1000,
    "row_offset": 0,
    "series_columns": ["event_type"],
    "series_limit": 0,
    "series_limit_metric": None,
    "group_others_when_limit_reached": False,
    "time_shift": None,
    "time_range": None,
    "time_offsets": [],
    "annotation_layers": [],
}
FILTER_COLUMNS = {"event_type"}


def asked(**changes) -> dict:
    query = copy.deepcopy(SAVED)
    query.update(changes)
    return query


def refusal(query: dict) -> str | None:
    return rules.refuse_chart_queries([query], [SAVED], FILTER_COLUMNS)


def test_the_saved_query_itself_is_allowed():
    assert refusal(asked()) is None


def test_a_smaller_row_limit_is_allowed():
    assert refusal(asked(row_limit=10)) is None


def test_a_dashboard_filter_on_its_column_is_allowed():
    assert refusal(asked(filter=[{"col": "event_type", "op": "IN", "val": ["view", "click"]}])) is None


def test_no_time_range_is_the_same_however_it_is_said():
    assert refusal(asked(time_range="No filter")) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"metrics": [{"expressionType": "SQL", "sqlExpression": "count(*)", "label": "events"}]}, "metrics"),
        ({"columns": ["minute", "event_type", "user_id"]}, "columns"),
        ({"extras": {**SAVED["extras"], "where": "1 = 1"}}, "extras"),
        ({"extras": {**SAVED["extras"], "having": "count(*) > 0"}}, "extras"),
        ({"orderby": [["events", True]]}, "orderby"),
        ({"post_processing": [{"operation": "prophet", "options": {}}]}, "post_processing"),
        ({"time_offsets": ["1 year ago"]}, "time_offsets"),
        ({"time_range": "Last 100 years"}, "time_range"),
        ({"row_offset": 100}, "row_offset"),
        ({"row_limit": 1001}, "row_limit 1001"),
        ({"row_limit": None}, "row_limit None"),
    ],
    ids=[
        "metric",
        "column",
        "where",
        "having",
        "order",
        "post-processing",
        "time-comparison",
        "time-range",
        "offset",
        "row-limit",
        "no-row-limit",
    ],
)
def test_any_other_change_is_refused_and_named(change, reason):
    assert refusal(asked(**change)).startswith(reason)


@pytest.mark.parametrize(
    "clause",
    [
        {"col": "user_id", "op": "IN", "val": [1]},
        {"col": "event_type", "op": "LIKE", "val": "%"},
        {"col": "event_type", "op": "IN", "val": ["x"] * 101},
        {"col": "event_type", "op": "IN", "val": [{"nested": "object"}]},
        {"col": {"sqlExpression": "1=1"}, "op": "IN", "val": [1]},
    ],
    ids=["other-column", "other-operator", "too-many-values", "not-plain-values", "expression-as-column"],
)
def test_a_filter_no_dashboard_filter_could_add_is_refused(clause):
    assert refusal(asked(filter=[clause])).startswith("filter")


def test_removing_the_charts_own_filter_is_refused():
    saved = {**SAVED, "filter": [{"col": "event_type", "op": "==", "val": "view"}]}
    assert rules.refuse_chart_queries([asked()], [saved], FILTER_COLUMNS).startswith("filter")


def test_an_extra_query_is_refused():
    assert rules.refuse_chart_queries([asked(), asked()], [SAVED], FILTER_COLUMNS).startswith("2 queries")


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"force": True}, "force"),
        ({"custom_cache_timeout": -1}, "custom_cache_timeout"),
        ({"result_type": "samples"}, "result samples"),
        ({"result_type": "query"}, "result query"),
        ({"result_format": "csv"}, "result full/csv"),
    ],
)
def test_request_options_beyond_the_charts_json_are_refused(options, reason):
    request = {"force": False, "result_type": "full", "result_format": "json", "custom_cache_timeout": None}
    assert rules.refuse_request(**{**request, **options}).startswith(reason)


FILTER_QUERY = {
    "columns": ["event_type"],
    "metrics": [],
    "orderby": [["event_type", True]],
    "filter": [],
    "extras": {"having": "", "where": ""},
    "row_limit": 1000,
    "series_limit": 0,
    "post_processing": [],
    "time_range": "No filter",
}


def test_a_filters_own_values_request_is_allowed():
    assert rules.refuse_native_filter_queries([FILTER_QUERY], "event_type", 1000, FILTER_COLUMNS) is None


def test_a_filters_search_on_its_column_is_allowed():
    search = {**FILTER_QUERY, "filter": [{"col": "event_type", "op": "ILIKE", "val": "%vi%"}]}
    assert rules.refuse_native_filter_queries([search], "event_type", 1000, FILTER_COLUMNS) is None


@pytest.mark.parametrize(
    "change",
    [
        {"result_type": "samples"},
        {"applied_time_extras": {"__time_range": "Last year"}},
        {"metrics": ["count"]},
        {"columns": ["user_id"]},
        {"extras": {"where": "1 = 1"}},
        {"row_limit": 100_000},
        {"post_processing": [{"operation": "prophet"}]},
        {"orderby": [["user_id", True]]},
    ],
    ids=["own-result-type", "time-extras", "metric", "column", "where", "row-limit", "post-processing", "order"],
)
def test_a_filters_request_for_more_than_its_values_is_refused(change):
    assert rules.refuse_native_filter_queries([{**FILTER_QUERY, **change}], "event_type", 1000, FILTER_COLUMNS)


# --- the request as sent: every key Superset reads, at every level --------------------------------

CHARTS = {
    path.stem: json.loads(yaml.safe_load(path.read_text())["query_context"])
    for path in sorted((ROOT / "superset" / "dashboards" / "charts").glob("*.yaml"))
}
MISSING = object()


def as_sent(context: dict, filters: list | None = None) -> dict:
    """A saved query context as the dashboard page posts it: its ids in form_data, its filter's clauses."""
    body = copy.deepcopy(context)
    body["form_data"].update(dashboardId=1, slice_id=7, dashboards=[1], label_colors={"view": "#000"})
    for query in body["queries"]:
        query["filters"] = [*query.get("filters", []), *(filters or [])]
    return body


def raw_refusal(body: dict, saved: dict, query_fields=None) -> str | None:
    return rules.refuse_chart_request(body, saved, FILTER_COLUMNS, query_fields)


TOP_USERS = CHARTS["Top_users_by_total_activity"]


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_each_saved_chart_as_the_dashboard_sends_it_is_allowed(chart):
    assert raw_refusal(as_sent(CHARTS[chart]), CHARTS[chart]) is None


@pytest.mark.parametrize("chart", sorted(CHARTS))
def test_each_saved_chart_with_the_dashboard_filter_is_allowed(chart):
    chosen = [{"col": "event_type", "op": "IN", "val": ["view"]}]
    assert raw_refusal(as_sent(CHARTS[chart], chosen), CHARTS[chart]) is None


@pytest.mark.parametrize("result_type", ["samples", "query", "results", "drill_detail", "full"])
def test_a_querys_own_result_type_is_refused(result_type):
    """Superset runs a query's own result_type before the request's: samples are the raw rows."""
    body = as_sent(TOP_USERS)
    body["queries"][0]["result_type"] = result_type
    assert raw_refusal(body, TOP_USERS).startswith("result_type")


def test_a_querys_own_datasource_is_refused():
    body = as_sent(TOP_USERS)
    body["queries"][0]["datasource"] = {"id": 1, "type": "table"}
    assert raw_refusal(body, TOP_USERS).startswith("datasource")


@pytest.mark.parametrize("kind", ["query", "saved_query", "semantic_view", "sl_table", None])
def test_a_datasource_other_than_a_table_is_refused(kind):
    body = as_sent(TOP_USERS)
    body["datasource"]["type"] = kind
    saved = copy.deepcopy(TOP_USERS)
    saved["datasource"]["type"] = kind  # even were the chart saved so
    assert raw_refusal(body, saved).startswith("datasource: a table")


def test_a_form_data_key_superset_reads_is_compared():
    body = as_sent(TOP_USERS)
    body["form_data"]["x_axis"] = "users"
    assert raw_refusal(body, TOP_USERS).startswith("form_data.x_axis")


def test_a_false_form_data_key_is_the_same_as_none():
    """The dashboard sends server_pagination: false for a table chart that saved none."""
    table = CHARTS["User_engagement_top_10_by_sessions"]
    body = as_sent(table)
    body["form_data"]["server_pagination"] = False
    assert raw_refusal(body, table) is None


def test_a_key_superset_drops_unread_may_differ():
    body = as_sent(TOP_USERS)
    body["queries"][0]["custom_params"] = {"anything": 1}
    fields = set(TOP_USERS["queries"][0]) - {"custom_params"}
    assert raw_refusal(body, TOP_USERS, fields) is None and raw_refusal(body, TOP_USERS) is not None


def test_a_request_that_is_not_a_chart_data_request_is_refused():
    assert rules.refuse_request_body({**as_sent(TOP_USERS), "sql": "SELECT 1"}).startswith("sql")


def test_url_params_beyond_the_bound_are_refused():
    body = as_sent(TOP_USERS)
    body["queries"][0]["url_params"] = {str(i): "x" for i in range(rules.MAX_URL_PARAMS + 1)}
    at_bound = as_sent(TOP_USERS)
    at_bound["queries"][0]["url_params"] = {str(i): "x" for i in range(rules.MAX_URL_PARAMS)}
    assert raw_refusal(body, TOP_USERS).startswith("url_params") and raw_refusal(at_bound, TOP_USERS) is None


def test_a_row_limit_where_the_chart_saved_none_is_refused():
    total = CHARTS["Total_events_dbt"]
    body = as_sent(total)
    body["queries"][0]["row_limit"] = 1
    assert raw_refusal(body, total).startswith("row_limit")


# Hypothesis: any change to any key at any level of a saved query context is refused, unless it is
# one of the documented variable fields and stays within its bounds.

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
#: Keys Superset 6.1 reads at each level (its request schemas), to add where they are not: a new
#: key must be refused as surely as a changed one.
KEYS = {
    "top": sorted(rules.REQUEST_FIELDS | {"sql", "slice_id"}),
    "form_data": [*rules.FORM_DATA_FIELDS, "dashboardId", "slice_id", "time_range", "adhoc_filters", "url_params"],
    "query": [
        "annotation_layers", "applied_time_extras", "apply_fetch_values_predicate", "filters", "granularity",
        "granularity_sqla", "groupby", "metrics", "post_processing", "time_range", "time_shift", "is_timeseries",
        "series_columns", "series_limit", "series_limit_metric", "group_others_when_limit_reached",
        "timeseries_limit", "timeseries_limit_metric", "row_limit", "row_offset", "order_desc", "extras",
        "columns", "orderby", "where", "having", "url_params", "is_rowcount", "time_offsets", "datasource",
        "result_type",
    ],
    "anywhere": ["where", "having", "time_grain_sqla", "relative_start", "transpile_to_dialect", "options", "op"],
}  # fmt: skip


def paths(value, prefix=()):
    """Every member of every dict and list in a JSON value, as a path of keys and indexes."""
    if isinstance(value, dict):
        for key, member in value.items():
            yield (*prefix, key)
            yield from paths(member, (*prefix, key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            yield (*prefix, index)
            yield from paths(member, (*prefix, index))


def containers(value, prefix=()):
    if isinstance(value, dict):
        yield prefix
    for path in paths(value, prefix):
        node = value
        for step in path[len(prefix) :]:
            node = node[step]
        if isinstance(node, dict):
            yield path


def at(value, path):
    for step in path:
        value = value[step]
    return value


def lookup(value, path):
    """The value at a path, or MISSING where a key is absent."""
    for step in path:
        if isinstance(value, dict) and step in value or isinstance(value, list) and isinstance(step, int):
            value = value[step]
        else:
            return MISSING
    return value


@st.composite
def mutations(draw):
    """(chart, the dashboard's request with one key changed, removed or added): at the top level,
    in form_data, in a query, or anywhere deeper, each as likely."""
    name = draw(st.sampled_from(sorted(CHARTS)))
    body = as_sent(CHARTS[name])
    level = draw(st.sampled_from(sorted(KEYS)))
    query = ("queries", draw(st.integers(0, len(body["queries"]) - 1)))
    container = {"top": (), "form_data": ("form_data",), "query": query}.get(level)
    kind = draw(st.sampled_from(["replace", "remove", "add"]))
    if kind == "add":
        where = container if container is not None else draw(st.sampled_from(list(containers(body))))
        key = draw(st.sampled_from(KEYS[level]) | st.text(min_size=1, max_size=6))
        parent = at(body, where)
        if key not in parent:
            parent[key] = draw(JSON)
            return name, body
        kind, path = "replace", (*where, key)
    else:
        candidates = [p for p in paths(body) if container is None or p[:-1] == container]
        path = draw(st.sampled_from(candidates))
    parent, old = at(body, path[:-1]), at(body, path)
    if kind == "remove":
        del parent[path[-1]]
    else:
        near = [JSON]
        if isinstance(old, bool):
            near.append(st.just(not old))
        elif isinstance(old, int):
            near.append(st.sampled_from([old - 1, old + 1, 0, -1]))
        elif isinstance(old, str):
            near.append(st.sampled_from([old + " ", old.upper(), "", "No filter", "samples", "query"]))
        parent[path[-1]] = draw(st.one_of(near))
    return name, body


def _changed(new: dict, old: dict, prefix: tuple, absent=MISSING) -> list[tuple]:
    keys = new.keys() | old.keys()
    return [(*prefix, k) for k in keys if rules.canonical(new.get(k, absent)) != rules.canonical(old.get(k, absent))]


def _differences(body: dict, saved: dict) -> list[tuple]:
    """What changed, at the level the rules document: a top-level key, a key of form_data, a key
    of one query (or the form_data / queries themselves)."""
    out: list[tuple] = []
    for key in _changed(body, saved, ()):
        new, old = body.get(key[0], MISSING), saved[key[0]] if key[0] in saved else MISSING
        if key == ("form_data",) and isinstance(new, dict):
            # Superset reads its keys with .get() and a truth test: absent, null, false, empty are one
            new, old = ({k: v for k, v in d.items() if v} for d in (new, old))
            out += _changed(new, old, key)
        elif key == ("queries",) and isinstance(new, list) and all(isinstance(q, dict) for q in new):
            if len(new) != len(old):
                out.append(key)
            for i, (query, kept) in enumerate(zip(new, old)):
                out += _changed(query, kept, (*key, i))
        else:
            out.append(key)
    return out


def _plain(value) -> bool:
    return value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 200)


def _short_texts(value) -> bool:
    texts = [*value, *value.values()] if isinstance(value, dict) else [None]
    return len(texts) <= 40 and all(isinstance(t, str) and len(t) <= 200 for t in texts)


def _dashboard_clause(clause) -> bool:
    values = clause.get("val")
    return (
        clause.get("col") == "event_type"
        and clause.get("op") in ("IN", "NOT IN")
        and isinstance(values, list)
        and len(values) <= 100
        and all(map(_plain, values))
    )


def _allowed(change: tuple, body: dict, saved: dict) -> bool:
    """The documented variable fields, restated: the oracle the rules are held to."""
    new = lookup(body, change)
    if change == ("force",):
        return new is MISSING or new in (None, False)
    if change in (("result_type",), ("result_format",), ("custom_cache_timeout",)):
        return new is MISSING or new == {"result_type": "full", "result_format": "json"}.get(change[0])
    if change[0] == "form_data" and len(change) == 2:
        return change[1] not in rules.FORM_DATA_FIELDS
    if change[0] != "queries" or len(change) != 3:
        return False
    key, kept = change[2], lookup(saved, change)
    if key == "time_range":
        return new is MISSING or new in (None, "", "No filter")
    if key == "url_params":
        return new in (MISSING, None, {}) or _short_texts(new)
    if key == "row_limit" and kept is MISSING:
        return new is MISSING or new is None
    if key == "row_limit":
        return isinstance(new, int) and not isinstance(new, bool) and 0 <= new <= kept
    if key == "filters":
        added = [c for c in new if c not in kept] if isinstance(new, list) else []
        well_formed = isinstance(new, list) and all(isinstance(c, dict) for c in new)
        if new in (MISSING, None):
            return not kept  # the chart's own filters (its funnel, a time range) stay
        return well_formed and all(c in new for c in kept) and all(map(_dashboard_clause, added))
    return False


@settings(max_examples=1500, deadline=None)
@given(mutations())
def test_any_change_to_a_saved_query_context_is_refused_unless_a_variable_field_allows_it(mutation):
    name, body = mutation
    saved = CHARTS[name]
    changes = _differences(body, saved)
    allowed = all(_allowed(change, body, saved) for change in changes)
    refusal = raw_refusal(body, saved)
    assert (refusal is None) == allowed, (changes, refusal)
