with

user_events as (

    select * from {{ ref('stg_streaming__user_events') }}

),

per_type as (

    select
        event_type,
        sum(event_count)::bigint as event_count,
        count(*)::bigint as user_count

    from user_events
    group by event_type

),

distribution as (

    select
        event_type,
        event_count,
        user_count,
        event_count::numeric / sum(event_count) over () as share_of_events

    from per_type

)

select * from distribution
order by event_count desc
