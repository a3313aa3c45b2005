{#- Every model lands in the target schema (`analytics`) as is: no `analytics_staging` prefixes.
    Staging views are told apart by their `stg_` names, as in dbt's jaffle-shop. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ target.schema }}
{%- endmacro %}
