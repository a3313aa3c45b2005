{#- One row per (user_id as sent, UTC day) with events, the canonical user it is counted under and
    its first and last event time that day: what daily_active_users, retention_cohorts and the
    funnels' recounts read by index instead of streaming.event_log, which has none by user.
    Incremental: the event_log rows appended since the last build (an index range on written_xid)
    are merged in (times: least / greatest), and the rows of every id whose canonical user changed
    (an identify written since, or the user it was counted under deleted) are moved; a deleted
    user's rows are dropped. The pre-hook hands the marts what changed (macros/activity_recounts.sql). -#}
-- depends_on: {{ ref('stg_streaming__identities') }}
{{
    config(
        unique_key=['user_id', 'activity_date'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['user_id', 'activity_date'], 'unique': True},
            {'columns': ['counted_under', 'activity_date']},
            {'columns': ['activity_date']},
            {'columns': ['moved_xid']},
            {'columns': ['build_xid']},
        ],
        pre_hook="{{ prepare_activity_changes() }}"
    )
}}

with

{% if is_incremental() %}

-- The days of the events appended since the last build, and the kept rows they add to.
new_days as (

    select user_id, activity_date, first_event_at, last_event_at from activity_new_days

),

candidates as (

    select user_id, activity_date, first_event_at, last_event_at from new_days
    union all
    select kept.user_id, kept.activity_date, kept.first_event_at, kept.last_event_at
    from {{ this }} as kept
    join new_days using (user_id, activity_date)
    union all
    -- rows of an id whose canonical user changed (activity_moves: pre-hook)
    select user_id, activity_date, first_event_at, last_event_at from activity_moves where not is_deleted

),

{% else %}

candidates as (

    select
        user_id,
        {{ utc_date('occurred_at') }} as activity_date,
        occurred_at as first_event_at,
        occurred_at as last_event_at
    from {{ source('streaming', 'event_log') }}

),

{% endif %}

merged as (

    select user_id, activity_date, min(first_event_at) as first_event_at, max(last_event_at) as last_event_at
    from candidates
    group by user_id, activity_date

),

canonical as (

    {% if is_incremental() %}
    select user_id, {{ canonical_user('ids.user_id') }} as counted_under
    from (select distinct user_id from merged) as ids
    {% else %}
    select ids.user_id, coalesce(identities.user_id, ids.user_id) as counted_under
    from (select distinct user_id from merged) as ids
    left join {{ ref('stg_streaming__identities') }} as identities on identities.anonymous_id = ids.user_id
    {% endif %}

),

activity as (

    select
        merged.user_id,
        merged.activity_date,
        canonical.counted_under,
        merged.first_event_at,
        merged.last_event_at,
        {% if is_incremental() %}
        case
            when kept.counted_under is distinct from canonical.counted_under and kept.user_id is not null
                then {{ build_xid() }}
            else kept.moved_xid
        end as moved_xid,
        {% else %}
        null::bigint as moved_xid,
        {% endif %}
        {{ build_xid() }} as build_xid

    from merged
    join canonical using (user_id)
    {% if is_incremental() %}
    left join {{ this }} as kept using (user_id, activity_date)
    {% endif %}

)

select * from activity
