"""superset/public_queries.py: what an anonymous chart-data request may differ in from the saved chart
(the rules alone; tests/e2e/test_public_view.py sends the requests through Superset)."""

from __future__ import annotations

import copy
import importlib.util

import pytest

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
        {"metrics": ["count"]},
        {"columns": ["user_id"]},
        {"extras": {"where": "1 = 1"}},
        {"row_limit": 100_000},
        {"post_processing": [{"operation": "prophet"}]},
        {"orderby": [["user_id", True]]},
    ],
    ids=["metric", "column", "where", "row-limit", "post-processing", "order"],
)
def test_a_filters_request_for_more_than_its_values_is_refused(change):
    assert rules.refuse_native_filter_queries([{**FILTER_QUERY, **change}], "event_type", 1000, FILTER_COLUMNS)
