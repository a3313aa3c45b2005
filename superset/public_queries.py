"""What an anonymous visitor may ask Superset's chart-data API: the public charts' saved queries.

Superset builds each chart's query in the browser and posts it; with DASHBOARD_RBAC, the Public
role then runs whatever a public chart's dataset can answer (any column or SQL expression, any
row limit, `force` past the cache). For guest tokens Superset compares the request with the
saved chart (`query_context_modified`), but only its metrics and columns. These rules compare
the whole query, after Superset has normalised both sides, with what the chart saved:

- every field of every query equal to the saved one (metrics, columns, where/having, order,
  post-processing, time range, time comparisons, annotations...), except two:
- `row_limit` at most the saved one, and
- `filter`: the saved filters, plus clauses the dashboard's own native filters add (IN / NOT IN
  on a column a native filter targets, with a bounded list of plain values);
- the request itself: no `force`, no cache timeout of its own, JSON of the full result only.

A native filter's own request (the values it offers) may only group its target column, with
no metric and no expression. Pure functions over plain dicts (a QueryObject's `to_dict()` with
its time range, time offsets and annotations): `security.py` feeds them from Superset, and the
unit tests without it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

#: Fields a request may change: row_limit (down) and filter (dashboard filters) are checked on
#: their own; the time bounds are the time range resolved at request time (the range itself is
#: compared); the inner bounds belong to time comparisons (compared as time_offsets).
VARIABLE_FIELDS = frozenset({"row_limit", "filter", "from_dttm", "to_dttm", "inner_from_dttm", "inner_to_dttm"})
#: What a dashboard's select filter adds to the charts in its scope.
NATIVE_FILTER_OPERATORS = frozenset({"IN", "NOT IN"})
#: A select filter's search box (server-side search) on its own column.
SEARCH_OPERATOR = "ILIKE"
MAX_FILTER_VALUES = 100
MAX_FILTER_VALUE_LENGTH = 200
#: "No filter" is what Superset's frontend sends for an unset time range.
NO_TIME_RANGE = (None, "", "No filter")


def canonical(value: Any) -> str:
    """One text per value, whatever the key order (how Superset's own check compares values)."""
    return json.dumps(value, sort_keys=True, default=str)


def query_shape(query: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a normalised query that must equal the saved chart's."""
    shape = {k: v for k, v in query.items() if k not in VARIABLE_FIELDS}
    # Computed by Superset while it runs the query (per request); Superset's cache key drops it too.
    shape["post_processing"] = [
        {**step, "options": {k: v for k, v in step["options"].items() if k != "contribution_totals"}}
        if step.get("operation") == "contribution" and isinstance(step.get("options"), dict)
        else step
        for step in query.get("post_processing") or []
    ]
    if shape.get("time_range") in NO_TIME_RANGE:
        shape["time_range"] = None
    return shape


def refuse_request(
    *, force: bool, result_type: str, result_format: str, custom_cache_timeout: int | None
) -> str | None:
    """Why a request's own options are refused, or None."""
    if force:
        return "force: public charts are answered from the cache"
    if custom_cache_timeout is not None:
        return "custom_cache_timeout: the cache period is the chart's"
    if (result_type, result_format) != ("full", "json"):
        return f"result {result_type}/{result_format}: public charts answer full/json only"
    return None


def _plain_value(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, bool | int | float)
        or (isinstance(value, str) and len(value) <= MAX_FILTER_VALUE_LENGTH)
    )


def refuse_filter_clause(
    clause: Mapping[str, Any], filter_columns: Collection[str], search_column: str | None
) -> str | None:
    """Why one filter clause that the saved query lacks is refused, or None."""
    column, operator, values = clause.get("col"), clause.get("op"), clause.get("val")
    if not isinstance(column, str):
        return f"filter on {canonical(column)}: only the dashboard's filter columns may be filtered"
    if operator == SEARCH_OPERATOR and column == search_column:
        if isinstance(values, str) and len(values) <= MAX_FILTER_VALUE_LENGTH:
            return None
        return "filter search: a short text only"
    if column not in filter_columns:
        return f"filter on {column}: no dashboard filter targets it"
    if operator not in NATIVE_FILTER_OPERATORS:
        return f"filter {column} {operator}: dashboard filters select values (IN, NOT IN)"
    if not isinstance(values, list) or len(values) > MAX_FILTER_VALUES or not all(map(_plain_value, values)):
        return f"filter {column}: at most {MAX_FILTER_VALUES} plain values"
    return None


def _refuse_extra_filters(
    requested: Sequence[Mapping[str, Any]],
    saved: Sequence[Mapping[str, Any]],
    filter_columns: Collection[str],
    search_column: str | None = None,
) -> str | None:
    extra = Counter(canonical(c) for c in requested)
    missing = Counter(canonical(c) for c in saved) - extra
    if missing:
        return "filter: the chart's own filters were removed"
    extra.subtract(canonical(c) for c in saved)
    for text, count in extra.items():
        if count > 0 and (reason := refuse_filter_clause(json.loads(text), filter_columns, search_column)):
            return reason
    return None


def refuse_chart_queries(
    requested: Sequence[Mapping[str, Any]],
    saved: Sequence[Mapping[str, Any]],
    filter_columns: Collection[str] = (),
) -> str | None:
    """Why a request for a public chart differs from the chart's saved queries, or None."""
    if len(requested) != len(saved):
        return f"{len(requested)} queries: the chart saved {len(saved)}"
    for asked, kept in zip(requested, saved):
        asked_shape, kept_shape = query_shape(asked), query_shape(kept)
        changed = sorted(
            k
            for k in asked_shape.keys() | kept_shape.keys()
            if canonical(asked_shape.get(k)) != canonical(kept_shape.get(k))
        )
        if changed:
            return f"{', '.join(changed)}: differ from the saved chart"
        limit, saved_limit = asked.get("row_limit"), kept.get("row_limit")
        if saved_limit is not None and (limit is None or limit > saved_limit):
            return f"row_limit {limit}: the chart saved {saved_limit}"
        if reason := _refuse_extra_filters(asked.get("filter") or [], kept.get("filter") or [], filter_columns):
            return reason
    return None


def refuse_native_filter_queries(
    requested: Sequence[Mapping[str, Any]],
    column: str,
    row_limit: int,
    filter_columns: Collection[str] = (),
) -> str | None:
    """Why a native filter's request for its values asks more than its column's values, or None."""
    if len(requested) != 1:
        return f"{len(requested)} queries: a filter asks one"
    (query,) = requested
    extras = query.get("extras") or {}
    if query.get("metrics"):
        return "metrics: a filter asks for values, not aggregates"
    if canonical(query.get("columns")) != canonical([column]):
        return f"columns: a filter asks for its column ({column}) only"
    if any(
        canonical(order) not in (canonical([column, True]), canonical([column, False]))
        for order in query.get("orderby") or []
    ):
        return "orderby: a filter sorts by its column only"
    for key in ("post_processing", "time_offsets", "annotation_layers", "series_columns", "series_limit_metric"):
        if query.get(key):
            return f"{key}: not part of a filter"
    if query.get("series_limit") or query.get("is_rowcount") or query.get("row_offset"):
        return "series_limit/is_rowcount/row_offset: not part of a filter"
    if extras.get("where") or extras.get("having"):
        return "where/having: not part of a filter"
    if query.get("time_range") not in NO_TIME_RANGE or query.get("granularity"):
        return "time range: this dashboard's filters have none"
    if query.get("row_limit") is None or query["row_limit"] > row_limit:
        return f"row_limit {query.get('row_limit')}: a filter asks at most {row_limit}"
    return _refuse_extra_filters(query.get("filter") or [], [], filter_columns, search_column=column)
