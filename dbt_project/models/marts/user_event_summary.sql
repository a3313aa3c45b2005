{#- The reference README's model (the demo this project rebuilds: docs/architecture.md), column for column,
    per canonical user (after an identify, the anonymous id's events count under the known user). -#}
with

user_events as (

    select * from {{ ref('int_user_events_stitched') }}

),

summary as (

    select
        user_id,
        coalesce(sum(event_count) filter (where event_type = 'click'), 0)::bigint as total_clicks,
        coalesce(sum(event_count) filter (where event_type = 'view'), 0)::bigint as total_views,
        coalesce(sum(event_count) filter (where event_type = 'purchase'), 0)::bigint as total_purchases,
        sum(event_count)::bigint as total_events

    from user_events
    group by user_id

)

select * from summary
order by total_events desc
