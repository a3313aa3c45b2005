"""What an anonymous visitor may ask Superset's chart-data API: the public charts' saved queries.

Superset builds each chart's query in the browser and posts it; with DASHBOARD_RBAC, the Public
role then runs whatever a public chart's dataset can answer (any column or SQL expression, any
row limit, `force` past the cache, raw samples). For guest tokens Superset compares the request
with the saved chart (`query_context_modified`), but only its metrics and columns. These rules
compare the whole request with what the chart saved, twice: as it was sent (`refuse_chart_request`:
every key Superset reads, at the top level, in each query and in `form_data`; what
`QueryObject.to_dict()` leaves out, such as a query's own `result_type` or `datasource`, included)
and after Superset has normalised both sides (`refuse_chart_queries`). Each field equals the saved
one, except these variable fields:

- `row_limit` at most the saved one (none if the chart saved none);
- `filters`: the saved filters, plus clauses the dashboard's own native filters add (IN / NOT IN
  on a column a native filter targets, with a bounded list of plain values);
- `url_params` (the page's URL parameters: read only by Jinja templates, which this stack leaves
  off), a few short strings;
- after normalisation, the time bounds Superset resolves from the (compared) time range per request;
- `form_data` beyond the keys Superset reads from it (`FORM_DATA_FIELDS`; the dashboard's own ids
  are checked by `security.py`).

The request itself: a `table` datasource, the chart's own; no `force`, no cache timeout of its
own, JSON of the full result only.

A native filter's own request (the values it offers) may only group its target column, with
no metric and no expression. Pure functions over plain dicts (the request's JSON, and a
QueryObject's `to_dict()` with the fields it leaves out): `security.py` feeds them from Superset,
and the unit tests without it.
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
#: The same, in the request as sent: a query's `filters` (checked on their own like `filter`) and
#: `url_params` (see the module docstring); `row_limit` is checked on its own.
REQUEST_VARIABLE_FIELDS = frozenset({"row_limit", "filters", "url_params"})
#: What Superset 6.1 reads from a chart-data request's `form_data` when it answers: the x axis and
#: tooltips (columns added to the query), currency and column formats (a query of their own), the
#: chart type, server-side pagination (the row limit). The dashboard varies the rest (its ids,
#: colours, filter state).
FORM_DATA_FIELDS = (
    "x_axis",
    "tooltip_contents",
    "currency_format",
    "column_config",
    "viz_type",
    "server_pagination",
)
#: The keys of a chart-data request (ChartDataQueryContextSchema; Superset refuses any other).
REQUEST_FIELDS = frozenset(
    {"datasource", "queries", "force", "custom_cache_timeout", "result_type", "result_format", "form_data"}
)
#: The one kind of datasource the public charts use (no saved SQL Lab queries, no semantic layers).
DATASOURCE_TYPE = "table"
MAX_URL_PARAMS = 20
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


def refuse_chart_request(
    body: Mapping[str, Any],
    saved: Mapping[str, Any],
    filter_columns: Collection[str] = (),
    query_fields: Collection[str] | None = None,
) -> str | None:
    """Why a chart-data request, as sent, differs from the chart's saved query context in a field
    Superset reads, or None. `query_fields`: the keys Superset reads from each query (its schema's
    fields; the rest it drops unread); None compares every key."""
    if reason := refuse_request_body(body):
        return reason
    if canonical(body.get("datasource")) != canonical(saved.get("datasource")):
        return "datasource: the chart's own dataset"
    form_data, saved_form_data = body.get("form_data") or {}, saved.get("form_data") or {}
    if not isinstance(form_data, Mapping):
        return "form_data: an object"
    for key in FORM_DATA_FIELDS:
        # Superset reads each with .get() and a truth test: absent, null, false and empty are one
        # (the dashboard sends server_pagination: false where the chart saved none)
        if canonical(form_data.get(key) or None) != canonical(saved_form_data.get(key) or None):
            return f"form_data.{key}: differs from the saved chart"
    requested, kept = body.get("queries"), saved.get("queries") or []
    if not isinstance(requested, list) or len(requested) != len(kept):
        return f"{len(requested) if isinstance(requested, list) else 'no'} queries: the chart saved {len(kept)}"
    for asked, query in zip(requested, kept):
        if not isinstance(asked, Mapping):
            return "queries: objects"
        if reason := _refuse_raw_query(asked, query, filter_columns, query_fields):
            return reason
    return None


def refuse_request_body(body: Mapping[str, Any]) -> str | None:
    """Why the top level of a chart-data request is more than a dashboard's JSON request, or None
    (for a chart's request and a native filter's alike)."""
    if unknown := sorted(set(body) - REQUEST_FIELDS):
        return f"{', '.join(unknown)}: not part of a chart-data request"
    datasource = body.get("datasource")
    if not isinstance(datasource, Mapping) or datasource.get("type") != DATASOURCE_TYPE:
        return f"datasource: a {DATASOURCE_TYPE} (a dataset) only"
    return refuse_request(
        force=body.get("force") not in (None, False),
        result_type=body.get("result_type", "full"),
        result_format=body.get("result_format", "json"),
        custom_cache_timeout=body.get("custom_cache_timeout"),
    )


def _refuse_raw_query(
    asked: Mapping[str, Any],
    kept: Mapping[str, Any],
    filter_columns: Collection[str],
    query_fields: Collection[str] | None,
) -> str | None:
    def shape(query: Mapping[str, Any]) -> dict[str, Any]:
        keys = query.keys() if query_fields is None else query.keys() & set(query_fields)
        out = {k: query[k] for k in keys if k not in REQUEST_VARIABLE_FIELDS}
        if out.get("time_range") in NO_TIME_RANGE:
            out.pop("time_range", None)
        return out

    asked_shape, kept_shape = shape(asked), shape(kept)
    changed = sorted(
        k
        for k in asked_shape.keys() | kept_shape.keys()
        if k not in asked_shape or k not in kept_shape or canonical(asked_shape[k]) != canonical(kept_shape[k])
    )
    if changed:
        return f"{', '.join(changed)}: differ from the saved chart"
    limit, saved_limit = asked.get("row_limit"), kept.get("row_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        return f"row_limit {canonical(limit)}: a number of rows"
    if (limit is None) != (saved_limit is None) or (saved_limit is not None and limit > saved_limit):
        return f"row_limit {limit}: the chart saved {saved_limit}"
    url_params = asked.get("url_params")
    if url_params not in (None, {}) and not (
        isinstance(url_params, Mapping)
        and len(url_params) <= MAX_URL_PARAMS
        and all(_short_text(k) and _short_text(v) for k, v in url_params.items())
    ):
        return f"url_params: at most {MAX_URL_PARAMS} short texts"
    requested_filters = [] if asked.get("filters") is None else asked["filters"]
    saved_filters = kept.get("filters") or []
    if not isinstance(requested_filters, list) or not all(isinstance(c, Mapping) for c in requested_filters):
        return "filters: a list of clauses"
    return _refuse_extra_filters(requested_filters, saved_filters, filter_columns)


def _short_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_FILTER_VALUE_LENGTH


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
    if query.get("result_type") not in (None, "full"):
        return "result_type: a filter asks for its values (full)"
    for key in (
        "post_processing",
        "time_offsets",
        "annotation_layers",
        "series_columns",
        "series_limit_metric",
        "applied_time_extras",
    ):
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
