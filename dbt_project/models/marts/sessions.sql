{#- One row per session of a user. Incremental: only sessions written since the last build are merged. -#}
{{
    config(
        materialized='incremental',
        unique_key=['session_id', 'user_id'],
        incremental_strategy='merge',
        indexes=[{'columns': ['session_id', 'user_id'], 'unique': True}]
    )
}}

with

sessions as (

    select * from {{ ref('stg_streaming__sessions') }}
    {% if is_incremental() %}
    where {{ changed_since_last_build() }}
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
        purchase_count > 0 as is_converted

    from sessions

)

select * from enriched
