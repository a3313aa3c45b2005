{#- streaming.user_events with each row's canonical user: the known user its id was last
    identified as, else the id itself (macros/identity.sql). A view: the marts that read it are
    rebuilt whole, and their reconciliations read it live. -#}
{{ config(materialized='view') }}

with

user_events as (

    select * from {{ ref('stg_streaming__user_events') }}

),

identities as (

    select * from {{ ref('stg_streaming__identities') }}

),

stitched as (

    select
        ----------  ids
        coalesce(identities.user_id, user_events.user_id) as user_id,
        user_events.user_id as event_user_id,
        user_events.event_type,

        ----------  numerics
        user_events.event_count,

        ----------  change tracking
        user_events.source_xid

    from user_events
    left join identities on identities.anonymous_id = user_events.user_id

)

select * from stitched
