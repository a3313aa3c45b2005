{#- One row per user with sessions, with the profile's attributes (no personal data).
    Incremental: users with a session or a profile written since the last build are recomputed
    from all their sessions. -#}
{{
    config(
        materialized='incremental',
        unique_key='user_id',
        incremental_strategy='merge',
        indexes=[{'columns': ['user_id'], 'unique': True}]
    )
}}

with

sessions as (

    select * from {{ ref('stg_streaming__sessions') }}

),

users as (

    select * from {{ ref('stg_streaming__users') }}

),

{% if is_incremental() %}
changed_users as (

    {#- from the models, not the CTEs above: a CTE read twice is materialised in full -#}
    select user_id from {{ ref('stg_streaming__sessions') }} where {{ changed_since_last_build() }}
    union
    select user_id from {{ ref('stg_streaming__users') }} where {{ changed_since_last_build() }}

),
{% endif %}

per_user as (

    select
        user_id,
        count(*)::bigint as session_count,
        sum(event_count)::bigint as total_events,
        sum(purchase_count)::bigint as total_purchases,
        (count(*) filter (where purchase_count > 0))::bigint as converted_sessions,
        sum(revenue)::numeric(38, 2) as revenue,
        round(avg(event_count), 2) as avg_events_per_session,
        round(avg(extract(epoch from ended_at - started_at)), 1) as avg_session_duration_seconds,
        min(started_at) as first_seen_at,
        max(ended_at) as last_seen_at

    from sessions
    {% if is_incremental() %}
    where user_id in (select user_id from changed_users)
    {% endif %}
    group by user_id

),

engagement as (

    select
        per_user.user_id,
        users.country_code,
        users.plan,
        users.signed_up_on,
        per_user.session_count,
        per_user.total_events,
        per_user.total_purchases,
        per_user.converted_sessions,
        round(per_user.converted_sessions::numeric / per_user.session_count, 4) as session_conversion_rate,
        per_user.revenue,
        per_user.avg_events_per_session,
        per_user.avg_session_duration_seconds,
        per_user.first_seen_at,
        per_user.last_seen_at

    from per_user
    left join users on per_user.user_id = users.user_id

)

select * from engagement
