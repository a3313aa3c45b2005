{#-
The mart's totals equal its source's, over every key whose source rows were all written before
the mart's last build: that build saw them, and nothing has changed them since (see
macros/change_tracking.sql). Keys written to after the build are left to the next build, so the
test holds while the consumer keeps writing, and it fails on the drift an incremental build could
leave: a missed late event, a key only one side has, a total that differs.

    measures: [{name: ..., mart: <aggregate over mart rows>, source: <aggregate over source rows>}]
              (numeric aggregates; over no rows, a sum and a count both count as 0)

Optional: `source_where` restricts the source rows; `also_changed_keys` (a query of keys, which
may read `watermark.source_xmin`) adds keys to leave to the next build (ids identified since: a
mart stitched by identity); `wait_when` (a condition, which may read the watermark too) leaves
the whole check to the next build (a deletion since, whose keys the source no longer shows).

Totals, not a row-by-row comparison: a scan of each side, fast enough for every minute on 10M
events. The test needs the whole mart: give it `config: {where: whole_mart}` (see
macros/get_where_subquery.sql).
-#}
{% test reconciles_with_source(model, source_model, key, measures, source_key=none, source_where=none, also_changed_keys=none, wait_when=none) %}

with

watermark as (

    select {{ last_build_watermark(model) }} as source_xmin

),

changed_keys as (

    select distinct {{ source_key or key }} as reconcile_key
    from {{ source_model }}
    where {{ xid_follows_or_equals('source_xid', '(select source_xmin from watermark)') }}
    {%- if also_changed_keys %}
    union
    select * from ({{ also_changed_keys }}) as also_changed
    {%- endif %}

),

source_totals as (

    select
        {%- for measure in measures %}
        coalesce({{ measure.source }}, 0) as {{ measure.name }}{{ "," if not loop.last }}
        {%- endfor %}
    from {{ source_model }} as source_rows
    where {{ source_where or 'true' }} and not exists (
        select from changed_keys as c where c.reconcile_key = source_rows.{{ source_key or key }}
    )

),

mart_totals as (

    select
        {%- for measure in measures %}
        coalesce({{ measure.mart }}, 0) as {{ measure.name }}{{ "," if not loop.last }}
        {%- endfor %}
    from {{ model }} as mart_rows
    where not exists (select from changed_keys as c where c.reconcile_key = mart_rows.{{ key }})

)

select
    'totals differ' as problem,
    {%- for measure in measures %}
    s.{{ measure.name }} as source_{{ measure.name }},
    m.{{ measure.name }} as mart_{{ measure.name }},
    {%- endfor %}
    (select count(*) from changed_keys) as keys_left_to_the_next_build
from source_totals as s
cross join mart_totals as m
where
    {%- if wait_when %}
    not ({{ wait_when }}) and (
    {%- else %}
    (
    {%- endif %}
    false
    {%- for measure in measures %}
    or s.{{ measure.name }} is distinct from m.{{ measure.name }}
    {%- endfor %}
    )

union all

select
    'no build watermark recorded for this mart',
    {%- for measure in measures %}
    null, null,
    {%- endfor %}
    null
from watermark
where source_xmin is null

{% endtest %}
