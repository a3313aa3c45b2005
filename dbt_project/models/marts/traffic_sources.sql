{#- One row per (source, medium, campaign), by each session's first touch. Incremental: only the
    sessions written since the last build are read (an index range on streaming.sessions.written_xid,
    each version read by exactly one build: macros/build_snapshots.sql); what they change is added
    to the per-session and per-(source, user) state the build keeps (macros/session_sources.sql),
    and to the sources they left or joined. Its unique index is on a hash of the key: a referrer's
    host may be longer than a btree entry can be. -#}
-- depends_on: {{ source('streaming', 'sessions') }}
-- depends_on: {{ source('streaming', 'identities') }}
-- depends_on: {{ source('streaming', 'deleted_users') }}
{{
    config(
        materialized='incremental',
        unique_key=['source', 'medium', 'campaign'],
        incremental_strategy='traffic_sources',
        on_schema_change='ignore',
        indexes=[{'columns': ["md5(source || chr(10) || medium || chr(10) || campaign)"], 'unique': True}],
        pre_hook=["{{ remember_build_full_snapshot() }}", "{{ fill_session_sources_if_full_build() }}"],
        post_hook=["{{ record_build_snapshot() }}"]
    )
}}

{% if is_incremental() %}

-- The sessions written since, as they are now: the strategy replaces their kept versions.
{{ session_first_touch() }}

{% else %}

{{ traffic_sources_from_state() }}

{% endif %}
