{#- One row per UTC day with an active user: active users, new users (first active that day),
    sessions started and events. Users are canonical (identity stitched). Incremental: only the days
    int_user_activity_days queued (new events, moved or deleted rows, first days that may have
    moved) and the days a session written since the last build spans are recounted, each by index. -#}
{{
    config(
        materialized='incremental',
        unique_key='activity_date',
        incremental_strategy='merge',
        indexes=[{'columns': ['activity_date'], 'unique': True}],
        pre_hook=[
            "{{ take_activity_recounts('dates', 'activity_date') }}",
            "{{ queue_session_days() }}",
            "{{ delete_pending_rows('activity_date') }}",
        ],
        post_hook="{{ clear_activity_recounts('dates') }}"
    )
}}

with

activity as not materialized (

    select * from {{ ref('int_user_activity_days') }}

),

days as (

    {% if is_incremental() %}
    select distinct key as activity_date from pending_recounts
    {% else %}
    select distinct activity_date from activity
    {% endif %}

),

active as (

    select distinct days.activity_date, activity.counted_under as user_id
    from days
    join activity on activity.activity_date = days.activity_date

),

users_per_day as (

    select
        activity_date,
        count(*) as active_users,
        count(*) filter (
            where not exists (
                select from activity as earlier
                where earlier.counted_under = active.user_id and earlier.activity_date < active.activity_date
            )
        ) as new_users
    from active
    group by activity_date

),

bounds as (

    select
        activity_date,
        activity_date::timestamp at time zone 'UTC' as day_start,
        (activity_date + 1)::timestamp at time zone 'UTC' as day_end
    from users_per_day

),

daily as (

    select
        u.activity_date,
        u.active_users,
        u.new_users,
        (
            select count(*) from {{ source('streaming', 'sessions') }} as s
            where s.first_event_at >= b.day_start and s.first_event_at < b.day_end
        ) as sessions,
        (
            select coalesce(sum(m.event_count), 0) from {{ source('streaming', 'event_minutes') }} as m
            where m.minute >= b.day_start and m.minute < b.day_end
        )::bigint as events,
        {{ build_xid() }} as build_xid

    from users_per_day as u
    join bounds as b using (activity_date)

)

select * from daily
