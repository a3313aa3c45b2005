{#- One row per session of a user. Incremental: only the sessions written since the last build are
    read (an index range on streaming.sessions.written_xid) and merged; the same transaction keeps
    the per-user totals that user_engagement reads (macros/user_session_totals.sql). The sessions of
    users deleted since the last build go (an index range on the mart's user_id). Per session of
    the id it was sent with: user_engagement stitches identities. -#}
-- depends_on: {{ source('streaming', 'deleted_users') }}
{{
    config(
        materialized='incremental',
        unique_key=['session_id', 'user_id'],
        incremental_strategy='merge_and_total_by_user',
        indexes=[{'columns': ['session_id', 'user_id'], 'unique': True}],
        pre_hook=["{{ remember_build_full_snapshot() }}", "{{ reset_user_session_totals() }}"],
        post_hook=[
            "{{ sum_user_session_totals_if_empty(this) }}",
            "create index if not exists sessions_build_xid_idx on {{ this }} (build_xid)",
            "create index if not exists sessions_user_id_idx on {{ this }} (user_id)",
            "{{ record_build_snapshot() }}",
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
