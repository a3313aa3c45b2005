{#- streaming.sessions with each session's canonical user (macros/identity.sql): what
    user_engagement's reconciliation compares it with. A view. -#}
{{ config(materialized='view') }}

with

sessions as (

    select * from {{ ref('stg_streaming__sessions') }}

),

identities as (

    select * from {{ ref('stg_streaming__identities') }}

),

stitched as (

    select
        ----------  ids
        sessions.session_id,
        coalesce(identities.user_id, sessions.user_id) as user_id,
        sessions.user_id as session_user_id,

        ----------  numerics
        sessions.event_count,
        sessions.purchase_count,
        sessions.revenue,

        ----------  timestamps
        sessions.started_at,
        sessions.ended_at,

        ----------  change tracking
        sessions.source_xid

    from sessions
    left join identities on identities.anonymous_id = sessions.user_id

)

select * from stitched
