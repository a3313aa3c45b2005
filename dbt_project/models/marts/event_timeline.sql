{#- One row per minute of event time. Incremental: only the minutes with a source row written
    since the last build are recomputed, however old they are (late events included). -#}
{{
    config(
        materialized='incremental',
        unique_key='event_minute',
        incremental_strategy='merge',
        indexes=[{'columns': ['event_minute'], 'unique': True}]
    )
}}

with

event_minutes as (

    select * from {{ ref('stg_streaming__event_minutes') }}

),

{% if is_incremental() %}
changed_minutes as (

    select distinct event_minute
    from event_minutes
    where {{ changed_since_last_build() }}

),
{% endif %}

timeline as (

    select
        event_minute,
        sum(event_count)::bigint as total_events,
        coalesce(sum(event_count) filter (where event_type = 'view'), 0)::bigint as views,
        coalesce(sum(event_count) filter (where event_type = 'click'), 0)::bigint as clicks,
        coalesce(sum(event_count) filter (where event_type = 'purchase'), 0)::bigint as purchases,
        coalesce(sum(event_count) filter (where event_type not in ('view', 'click', 'purchase')), 0)::bigint
            as other_events,
        sum(revenue)::numeric(38, 2) as revenue

    from event_minutes
    {% if is_incremental() %}
    where event_minute in (select event_minute from changed_minutes)
    {% endif %}
    group by event_minute

)

select * from timeline
