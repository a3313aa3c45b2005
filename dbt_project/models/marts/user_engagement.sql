{#- One row per user with sessions, with the profile's attributes (no personal data), per canonical
    user: after an identify, the anonymous id's sessions count under the known user.
    Incremental: the users an id whose session totals (kept by the sessions mart's build,
    macros/user_session_totals.sql) or identity changed counts under, before and now, the users
    whose profile changed, and those an id was deleted from, are recounted from the totals of the
    ids they count (macros/user_engagement_ids.sql); no build reads a user's sessions. -#}
-- depends_on: {{ ref('sessions') }}
-- depends_on: {{ source('streaming', 'identities') }}
-- depends_on: {{ source('streaming', 'deleted_users') }}
{{
    config(
        materialized='incremental',
        unique_key='user_id',
        incremental_strategy='user_engagement',
        on_schema_change='ignore',
        indexes=[{'columns': ['user_id'], 'unique': True}],
        meta={'watermark_no_later_than': 'sessions'},
        pre_hook="{{ fill_user_engagement_ids_if_full_build() }}"
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
deleted_ids as (

    select user_id from {{ source('streaming', 'deleted_users') }}
    where {{ written_since_last_build() }}

),

-- ids whose sessions or identity changed, deleted ids, and ids counted under a deleted user
changed_ids as (

    select user_id from totals where {{ changed_since_last_build() }}
    union
    select anonymous_id from {{ source('streaming', 'identities') }} where {{ written_since_last_build() }}
    union
    select user_id from deleted_ids
    union
    select user_id from {{ user_engagement_ids() }}
    where canonical_user_id in (select user_id from deleted_ids)

),

-- the canonical users to recount: those the changed ids count under now and were counted under
changed_users as (

    select coalesce(identity.user_id, changed_ids.user_id) as user_id
    from changed_ids
    {{ current_identity('changed_ids.user_id') }}
    union
    select canonical_user_id from {{ user_engagement_ids() }}
    where user_id in (select user_id from changed_ids)
    union
    select user_id from users where {{ changed_since_last_build() }}

),

-- the ids each counts: itself unless identified as another, and the ids last identified as it
members as (

    select changed_users.user_id, changed_users.user_id as member_id
    from changed_users
    where not exists (
        select from {{ source('streaming', 'identities') }} as pairs
        where pairs.anonymous_id = changed_users.user_id
    )
    union all
    select pairs.user_id, pairs.anonymous_id
    from {{ source('streaming', 'identities') }} as pairs
    join changed_users on changed_users.user_id = pairs.user_id
    {{ current_identity('pairs.anonymous_id') }}
    where identity.user_id = pairs.user_id

),
{% else %}
members as (

    select coalesce(identities.user_id, totals.user_id) as user_id, totals.user_id as member_id
    from totals
    left join {{ ref('stg_streaming__identities') }} as identities on identities.anonymous_id = totals.user_id

),
{% endif %}

summed as (

    select
        members.user_id,
        sum(totals.session_count)::bigint as session_count,
        sum(totals.total_events)::bigint as total_events,
        sum(totals.total_purchases)::bigint as total_purchases,
        sum(totals.converted_sessions)::bigint as converted_sessions,
        sum(totals.revenue)::numeric(38, 2) as revenue,
        sum(totals.duration_seconds) as duration_seconds,
        min(totals.first_seen_at) as first_seen_at,
        max(totals.last_seen_at) as last_seen_at,
        array_agg(members.member_id) as member_ids

    from members
    join totals on totals.user_id = members.member_id
    group by members.user_id

),

engagement as (

    select
        summed.user_id,
        users.country_code,
        users.plan,
        users.signed_up_on,
        summed.session_count,
        summed.total_events,
        summed.total_purchases,
        summed.converted_sessions,
        round(summed.converted_sessions::numeric / summed.session_count, 4) as session_conversion_rate,
        summed.revenue,
        round(summed.total_events::numeric / summed.session_count, 2) as avg_events_per_session,
        round(summed.duration_seconds / summed.session_count, 1) as avg_session_duration_seconds,
        summed.first_seen_at,
        summed.last_seen_at{% if is_incremental() %},
        summed.member_ids{% endif %}

    from summed
    left join users on summed.user_id = users.user_id
    where summed.session_count > 0

)

{% if is_incremental() %}
-- every user to recount; one left with no session has a row of nulls, which the strategy deletes
select
    changed_users.user_id,
    engagement.country_code,
    engagement.plan,
    engagement.signed_up_on,
    coalesce(engagement.session_count, 0) as session_count,
    engagement.total_events,
    engagement.total_purchases,
    engagement.converted_sessions,
    engagement.session_conversion_rate,
    engagement.revenue,
    engagement.avg_events_per_session,
    engagement.avg_session_duration_seconds,
    engagement.first_seen_at,
    engagement.last_seen_at,
    engagement.member_ids
from changed_users
left join engagement on engagement.user_id = changed_users.user_id
{% else %}
select * from engagement
{% endif %}
