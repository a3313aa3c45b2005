{#-
Change tracking without a change column.

The consumer upserts aggregates: a late event adds to an old row without moving any timestamp in
it (`updated_at` is the newest event time, `minute` never moves). What does move is the row's
`xmin`, the id of the transaction that wrote its current version, which Postgres keeps on every
row. Staging models expose it as `source_xid`.

A mart's pre-hook keeps the xmin of its own snapshot, in the build's transaction and just before
the statement that reads the sources: every transaction with a smaller id had ended by then, so
the build saw its rows. The post-hook stores that value in `dbt_build_watermarks` when (and only
if) the build commits. From it:
- an incremental mart reads only rows whose xid follows or equals its last watermark: every row
  written since, including by transactions still open during the last build (their ids are at
  least that xmin), plus a few rows it saw already (merged again, harmlessly);
- a test can reconcile a mart with its sources while the consumer keeps writing: keys whose
  source rows all precede the watermark were seen by the build and not changed since.

Transaction ids are 32 bits and wrap around: they are compared as Postgres compares them
(modulo 2^32, within half the ring), so only rows untouched for ~2 billion transactions could be
read again (harmless). After restoring a dump into another cluster, run `dbt build --full-refresh`.
-#}

{#- The id of the transaction that wrote a source row's current version (staging models). -#}
{% macro source_xid() -%}
    xmin::text::bigint
{%- endmacro %}

{% macro create_build_watermarks() %}
create table if not exists {{ target.schema }}.dbt_build_watermarks (
    model_name  text        primary key,
    source_xmin bigint      not null,
    built_at    timestamptz not null
);
comment on table {{ target.schema }}.dbt_build_watermarks is
    'Per mart: the xmin of the snapshot its last successful build read the sources in (change tracking, written by dbt hooks).'
{% endmacro %}

{#- pre-hook: the xmin of this transaction's snapshot, kept until the post-hook (transaction-local). -#}
{% macro remember_build_snapshot() %}
select set_config('rt_analytics.build_xmin', pg_snapshot_xmin(pg_current_snapshot())::text, true)
{% endmacro %}

{#- post-hook: commits with the build, or rolls back with it. A missing pre-hook value fails loudly.
    A mart built from state another mart's build kept (meta `watermark_no_later_than`:
    user_engagement reads the per-user totals of the sessions build) reflects the sources as that
    build saw them, not as its own snapshot does: its watermark is held to that build's, so that a
    session committed between the two builds counts as changed since, not as seen. -#}
{% macro record_build_watermark() %}
{%- set upstream = (config.get('meta') or {}).get('watermark_no_later_than') -%}
insert into {{ target.schema }}.dbt_build_watermarks (model_name, source_xmin, built_at)
values (
    '{{ this.identifier }}',
    {% if upstream -%}
    least(
        current_setting('rt_analytics.build_xmin')::bigint,
        (select source_xmin from {{ target.schema }}.dbt_build_watermarks where model_name = '{{ upstream }}')
    ),
    {%- else -%}
    current_setting('rt_analytics.build_xmin')::bigint,
    {%- endif %}
    clock_timestamp()
)
on conflict (model_name) do update set source_xmin = excluded.source_xmin, built_at = excluded.built_at
{% endmacro %}

{#- The watermark of a mart's last successful build (NULL if it was never recorded). -#}
{% macro last_build_watermark(relation) -%}
    (select source_xmin from {{ target.schema }}.dbt_build_watermarks where model_name = '{{ relation.identifier }}')
{%- endmacro %}

{#- Postgres' TransactionIdFollowsOrEquals on 32-bit ids held in bigints; true when there is no watermark. -#}
{% macro xid_follows_or_equals(xid, watermark) -%}
    coalesce(((({{ xid }}) - ({{ watermark }})) & 4294967295) < 2147483648, true)
{%- endmacro %}

{#- In an incremental mart reading a source that keeps the writer's transaction id in an indexed
    xid8 column (streaming.sessions.written_xid): the rows written since its last build, as an index
    range instead of a scan of the whole table (all rows if none). The 64-bit ids do not wrap. -#}
{% macro written_since_last_build(xid8_column='written_xid') -%}
    {{ xid8_column }} >= coalesce({{ last_build_watermark(this) }}::text::xid8, '0'::xid8)
{%- endmacro %}

{#- In a mart: the id of the build's own transaction (64 bits), kept in a `build_xid` column that
    its tests then read by index (macros/get_where_subquery.sql). -#}
{% macro build_xid() -%}
    pg_current_xact_id()::text::bigint
{%- endmacro %}

{#- In an incremental mart: the source rows written since its last build (all rows if none). -#}
{% macro changed_since_last_build(xid_column='source_xid') -%}
    {{ xid_follows_or_equals(xid_column, last_build_watermark(this)) }}
{%- endmacro %}
