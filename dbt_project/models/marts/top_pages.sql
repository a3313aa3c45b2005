{#- One row per page. Incremental: only the events appended since the last build are read (an
    index range on streaming.event_log.written_xid, each event read by exactly one build:
    macros/build_snapshots.sql); their counts are added to page_users, and only their pages are
    recounted (macros/page_users.sql). -#}
-- depends_on: {{ source('streaming', 'event_log') }}
-- depends_on: {{ source('streaming', 'identities') }}
-- depends_on: {{ source('streaming', 'deleted_users') }}
{{
    config(
        materialized='incremental',
        unique_key='page',
        incremental_strategy='top_pages',
        on_schema_change='ignore',
        indexes=[{'columns': ['md5(page)'], 'unique': True}],
        pre_hook=["{{ remember_build_full_snapshot() }}", "{{ fill_page_users_if_full_build() }}"],
        post_hook=["{{ record_build_snapshot() }}"]
    )
}}

{% if is_incremental() %}

-- The new events per (page, user id): the strategy adds them to page_users and recounts their pages.
{{ page_user_counts() }}

{% else %}

{{ top_pages_from_page_users() }}

{% endif %}
