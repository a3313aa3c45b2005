{#- One row per user with sessions, with the profile's attributes (no personal data).
    Incremental: the users whose session totals (kept by the sessions mart's build,
    macros/user_session_totals.sql) or profile changed since the last build are read again;
    no build reads a user's sessions. -#}
-- depends_on: {{ ref('sessions') }}
{{
    config(
        materialized='incremental',
        unique_key='user_id',
        incremental_strategy='merge',
        indexes=[{'columns': ['user_id'], 'unique': True}],
        meta={'watermark_no_later_than': 'sessions'}
    )
}}

with

totals as (

    select *, {{ source_xid() }} as source_xid from {{ user_session_totals() }}

),

users as (

    select * from {{ ref('stg_streaming__users') }}

),

{% if is_incremental() %}
changed_users as (

    select user_id from totals where {{ changed_since_last_build() }}
    union
    select user_id from users where {{ changed_since_last_build() }}

),
{% endif %}

engagement as (

    select
        totals.user_id,
        users.country_code,
        users.plan,
        users.signed_up_on,
        totals.session_count,
        totals.total_events,
        totals.total_purchases,
        totals.converted_sessions,
        round(totals.converted_sessions::numeric / totals.session_count, 4) as session_conversion_rate,
        totals.revenue,
        round(totals.total_events::numeric / totals.session_count, 2) as avg_events_per_session,
        round(totals.duration_seconds / totals.session_count, 1) as avg_session_duration_seconds,
        totals.first_seen_at,
        totals.last_seen_at

    from totals
    left join users on totals.user_id = users.user_id
    where totals.session_count > 0
    {% if is_incremental() %}
    and totals.user_id in (select user_id from changed_users)
    {% endif %}

)

select * from engagement
