{#- One row per session of a user. Incremental: only the sessions written since the last build are
    read (an index range on streaming.sessions.written_xid) and merged; the same transaction keeps
    the per-user totals that user_engagement reads (macros/user_session_totals.sql). -#}
{{
    config(
        materialized='incremental',
        unique_key=['session_id', 'user_id'],
        incremental_strategy='merge_and_total_by_user',
        indexes=[{'columns': ['session_id', 'user_id'], 'unique': True}],
        pre_hook="{{ reset_user_session_totals() }}",
        post_hook=[
            "{{ sum_user_session_totals_if_empty(this) }}",
            "create index if not exists sessions_build_xid_idx on {{ this }} (build_xid)",
        ]
    )
}}

with

sessions as (

    select * from {{ ref('stg_streaming__sessions') }}
    {% if is_incremental() %}
    where {{ written_since_last_build() }}
    {% endif %}

),

enriched as (

    select
        session_id,
        user_id,
        started_at,
        ended_at,
        extract(epoch from ended_at - started_at)::numeric(15, 3) as duration_seconds,
        event_count,
        purchase_count,
        revenue,
        purchase_count > 0 as is_converted,
        {{ build_xid() }} as build_xid

    from sessions

)

select * from enriched
