{#- One row per (cohort: the UTC day canonical users were first active, day number 0 .. var
    `retention_days`): the cohort's users and how many of them were active that many days later.
    Incremental: only the cohorts of the dates int_user_activity_days queued are recomputed, each
    from its users' activity days by index. -#}
{%- set days_after = var('retention_days') -%}
{{
    config(
        materialized='incremental',
        unique_key=['cohort_date', 'day_number'],
        incremental_strategy='merge',
        indexes=[{'columns': ['cohort_date', 'day_number'], 'unique': True}],
        pre_hook=["{{ take_activity_recounts('dates', 'activity_date') }}", "{{ delete_pending_rows('cohort_date') }}"],
        post_hook="{{ clear_activity_recounts('dates') }}"
    )
}}

with

activity as not materialized (

    select * from {{ ref('int_user_activity_days') }}

),

{% if is_incremental() %}

-- the users first active on a queued date
members as (

    select distinct pending.cohort_date, activity.counted_under as user_id
    from (select distinct key as cohort_date from pending_recounts) as pending
    join activity on activity.activity_date = pending.cohort_date
    where not exists (
        select from activity as earlier
        where earlier.counted_under = activity.counted_under and earlier.activity_date < pending.cohort_date
    )

),

{% else %}

members as (

    select counted_under as user_id, min(activity_date) as cohort_date
    from activity
    group by counted_under

),

{% endif %}

sizes as (

    select cohort_date, count(*) as cohort_users from members group by cohort_date

),

returned as (

    select members.cohort_date, activity.activity_date - members.cohort_date as day_number,
        count(distinct members.user_id) as active_users
    from members
    join activity
        on activity.counted_under = members.user_id
        and activity.activity_date between members.cohort_date and members.cohort_date + {{ days_after }}
    group by 1, 2

),

cohorts as (

    select
        sizes.cohort_date,
        day_number,
        sizes.cohort_users,
        coalesce(returned.active_users, 0) as active_users,
        round(coalesce(returned.active_users, 0)::numeric / sizes.cohort_users, 4) as retention,
        {{ build_xid() }} as build_xid

    from sizes
    cross join generate_series(0, {{ days_after }}) as day_number
    left join returned using (cohort_date, day_number)

)

select * from cohorts
