{#-
Identity stitching and deletion in the marts (README, "Transformations": identity and deletion).

The canonical user of an event is the known user its user_id was last identified as, else the
user_id itself (streaming.identities; the latest identify wins; one level). A mart that keeps
per-id rows (top_pages' page_users, traffic_sources' session_sources) keeps with each the
canonical user it was counted under, so that a re-identification moves exactly those rows.
-#}

{#- A lateral join giving `alias.user_id`, the current identity of the id in `user_column` (none if
    it was never identified): one index look-up on streaming.identities' primary key. -#}
{% macro current_identity(user_column, alias='identity') -%}
    left join lateral (
        select latest_pair.user_id
        from {{ source('streaming', 'identities') }} as latest_pair
        where latest_pair.anonymous_id = {{ user_column }}
        order by latest_pair.identified_at desc, latest_pair.user_id desc
        limit 1
    ) as {{ alias }} on true
{%- endmacro %}

{#- The ids (anonymous ids) whose identity may have changed since the last build. -#}
{% macro ids_identified_for_this_build() -%}
    select anonymous_id as user_id
    from {{ source('streaming', 'identities') }}
    where {{ written_for_this_build() }}
{%- endmacro %}

{#- The users deleted since the last build (exactly once: see macros/build_snapshots.sql). -#}
{% macro users_deleted_for_this_build() -%}
    select user_id
    from {{ source('streaming', 'deleted_users') }}
    where {{ written_for_this_build() }}
{%- endmacro %}
