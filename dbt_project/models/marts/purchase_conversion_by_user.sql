{#- Per canonical user (after an identify, the anonymous id's events count under the known user).
    Reads the stitched staging rows, not user_event_summary: a mart built from one source snapshot can be
    reconciled with that source (tests/generic/reconciles_with_source.sql). -#}
with

user_events as (

    select * from {{ ref('int_user_events_stitched') }}

),

per_user as (

    select
        user_id,
        coalesce(sum(event_count) filter (where event_type = 'view'), 0)::bigint as total_views,
        coalesce(sum(event_count) filter (where event_type = 'click'), 0)::bigint as total_clicks,
        coalesce(sum(event_count) filter (where event_type = 'purchase'), 0)::bigint as total_purchases

    from user_events
    group by user_id

),

conversion as (

    select
        user_id,
        total_views,
        total_clicks,
        total_purchases,
        round(total_purchases::numeric / nullif(total_views, 0), 4) as purchase_conversion_rate,
        round(total_purchases::numeric / nullif(total_clicks, 0), 4) as click_to_purchase_rate

    from per_user

)

select * from conversion
order by user_id
