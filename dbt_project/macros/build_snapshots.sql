{#-
Exact change tracking for sources appended to or deleted from (streaming.event_log,
streaming.deleted_users) and for marts that add to what they kept (top_pages, traffic_sources).

macros/change_tracking.sql keeps the xmin of a build's snapshot: a later build reads again every
row from that xmin on, some of which the build had already seen. Merging a row again is harmless;
adding an event's count again, or deleting again the rows of a user deleted before (who has sent
new events since), is not. So a mart that adds keeps its whole snapshot (pg_snapshot: xmin, xmax
and the transactions in progress): the pre-hook takes it, the model reads only the rows written by
transactions visible in it and not visible in the last build's, and the post-hook stores it with
the build. Every row is then read by exactly one build: the first whose snapshot sees it.

The same pre-hook sets the build's xmin from that snapshot (`record_build_watermark` stores it),
so that the reconciliations (tests/generic/reconciles_with_source.sql) leave to the next build
exactly the rows this one did not see.
-#}

{#- on-run-start, beside the build watermarks -#}
{% macro create_build_snapshots() %}
create table if not exists {{ target.schema }}.dbt_build_snapshots (
    model_name text        primary key,
    snapshot   pg_snapshot not null,
    built_at   timestamptz not null
);
comment on table {{ target.schema }}.dbt_build_snapshots is
    'Per mart that adds to what it kept: the whole snapshot its last build read the sources in (macros/build_snapshots.sql).'
{% endmacro %}

{#- pre-hook (after the project's remember_build_snapshot): this build's snapshot, and its xmin as
    the build's watermark. -#}
{% macro remember_build_full_snapshot() %}
select
    set_config('rt_analytics.build_snapshot', s::text, true),
    set_config('rt_analytics.build_xmin', pg_snapshot_xmin(s)::text, true)
from (select pg_current_snapshot() as s) as current_snapshot
{% endmacro %}

{#- post-hook: commits with the build. -#}
{% macro record_build_snapshot() %}
insert into {{ target.schema }}.dbt_build_snapshots (model_name, snapshot, built_at)
values ('{{ this.identifier }}', current_setting('rt_analytics.build_snapshot')::pg_snapshot, clock_timestamp())
on conflict (model_name) do update set snapshot = excluded.snapshot, built_at = excluded.built_at
{% endmacro %}

{% macro last_build_snapshot() -%}
    (select snapshot from {{ target.schema }}.dbt_build_snapshots where model_name = '{{ this.identifier }}')
{%- endmacro %}

{% macro this_build_snapshot() -%}
    (select current_setting('rt_analytics.build_snapshot')::pg_snapshot)
{%- endmacro %}

{#- A row (by the xid8 of the transaction that wrote it) this build reads: visible in its snapshot.
    In an incremental build, only the rows the last build did not see, as an index range from the
    last snapshot's xmin (all rows if there is none). -#}
{% macro written_for_this_build(xid8_column='written_xid') -%}
    {%- if is_incremental() -%}
    ({{ xid8_column }} >= coalesce(pg_snapshot_xmin({{ last_build_snapshot() }}), '0'::xid8)
     and pg_visible_in_snapshot({{ xid8_column }}, {{ this_build_snapshot() }})
     and not coalesce(pg_visible_in_snapshot({{ xid8_column }}, {{ last_build_snapshot() }}), false))
    {%- else -%}
    pg_visible_in_snapshot({{ xid8_column }}, {{ this_build_snapshot() }})
    {%- endif -%}
{%- endmacro %}
