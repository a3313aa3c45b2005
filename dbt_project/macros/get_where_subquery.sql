{#-
`where: written_by_last_build` (set for every mart test in dbt_project.yml): a test reads only
the mart rows the last build wrote, by their xmin. Rows an incremental build did not touch were
tested when they were written, so a build's tests grow with its changes, not with history; a
table mart is rewritten whole, so its tests read every row. A mart with a `build_xid` column
(its build's 64-bit transaction id, indexed: `sessions`) is filtered by it, an index range,
instead of by xmin, which reads every row to find the few it wants.
`where: whole_mart` hands a test the mart itself (reconciliations). Any other `where` works as in dbt.
-#}
{% macro get_where_subquery(relation) -%}
    {%- if config.get('where') == 'written_by_last_build' and execute
          and 'build_xid' in (adapter.get_columns_in_relation(relation) | map(attribute='name') | list) -%}
        {%- set filtered -%}
            (select * from {{ relation }}
             where build_xid >= coalesce({{ last_build_watermark(relation) }}, 0)) as dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- elif config.get('where') == 'written_by_last_build' -%}
        {%- set filtered -%}
            (select * from {{ relation }}
             where {{ xid_follows_or_equals(source_xid(), last_build_watermark(relation)) }}) as dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- elif config.get('where') == 'whole_mart' -%}
        {%- do return(relation) -%}
    {%- else -%}
        {%- do return(dbt.default__get_where_subquery(relation)) -%}
    {%- endif -%}
{%- endmacro %}
