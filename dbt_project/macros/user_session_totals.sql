{#-
Per-user session totals, kept up to date by the `sessions` mart's own build, so that
`user_engagement` never re-reads a user's whole history.

`user_engagement` needs each user's session count, sums and first/last times. Recomputing a
changed user from all their sessions costs the user's history: with every user active every
minute, a scan of all sessions each build, growing without end. Instead, when the `sessions` mart
merges the sessions written since its last build, the same transaction adds to
`user_session_totals` the difference each one makes: its new values (the build's temporary
relation) minus its old ones (the mart's row before the merge, or nothing for a new session).
Both read the same rows in the same transaction, so the totals are always the sum over the
mart's rows; `user_engagement` then reads only the changed users' totals. Its reconciliation
with `streaming.sessions` (models/marts/user_engagement.yml) checks exactly that.

A session's first event only moves earlier and its newest only later (the consumer's least /
greatest), so the totals' first/last times follow with least / greatest.

When the mart is built in full (first build, `--full-refresh`), the pre-hook empties the totals
and the post-hook sums them from the new mart; an incremental build that finds them empty (the
upgrade that added them) sums them from the mart before merging.
-#}

{% macro user_session_totals() -%}
    {{ target.schema }}.user_session_totals
{%- endmacro %}

{#- on-run-start, beside the build watermarks -#}
{% macro create_user_session_totals() %}
create table if not exists {{ user_session_totals() }} (
    user_id            bigint         primary key,
    session_count      bigint         not null,
    total_events       bigint         not null,
    total_purchases    bigint         not null,
    converted_sessions bigint         not null,
    revenue            numeric(38, 2) not null,
    duration_seconds   numeric        not null,
    first_seen_at      timestamptz    not null,
    last_seen_at       timestamptz    not null
);
comment on table {{ user_session_totals() }} is
    'Per user: totals over the rows of the sessions mart, maintained by its build (macros/user_session_totals.sql); read by user_engagement.'
{% endmacro %}

{#- The totals summed from every row of a sessions relation, when they are empty. -#}
{% macro sum_user_session_totals_if_empty(sessions_relation) %}
insert into {{ user_session_totals() }}
select
    user_id,
    count(*),
    sum(event_count),
    sum(purchase_count),
    count(*) filter (where purchase_count > 0),
    sum(revenue),
    sum(extract(epoch from ended_at - started_at)),
    min(started_at),
    max(ended_at)
from {{ sessions_relation }}
where not exists (select from {{ user_session_totals() }})
group by user_id
{% endmacro %}

{#- sessions' pre-hook: a build in full starts the totals afresh. -#}
{% macro reset_user_session_totals() %}
{%- if not is_incremental() %}
truncate {{ user_session_totals() }}
{%- else %}
select 'incremental build: user_session_totals are added to'
{%- endif %}
{% endmacro %}

{#-
incremental_strategy='merge_and_total_by_user': the totals take each merged session's difference,
then the standard merge runs, in the build's transaction.
-#}
{% macro get_incremental_merge_and_total_by_user_sql(arg_dict) %}
{%- set new = arg_dict['temp_relation'] -%}
{%- set old = arg_dict['target_relation'] -%}
{{ sum_user_session_totals_if_empty(old) }};

-- users deleted since the last build (exactly once: macros/build_snapshots.sql): their sessions
-- and totals go; any session they sent since is merged below as new
delete from {{ user_session_totals() }} where user_id in ({{ users_deleted_for_this_build() }});
delete from {{ old }} where user_id in ({{ users_deleted_for_this_build() }});

insert into {{ user_session_totals() }} as t
select
    n.user_id,
    count(*) filter (where o.session_id is null),
    sum(n.event_count - coalesce(o.event_count, 0)),
    sum(n.purchase_count - coalesce(o.purchase_count, 0)),
    sum((n.purchase_count > 0)::int - coalesce((o.purchase_count > 0)::int, 0)),
    sum(n.revenue - coalesce(o.revenue, 0)),
    sum(extract(epoch from n.ended_at - n.started_at) - coalesce(extract(epoch from o.ended_at - o.started_at), 0)),
    min(n.started_at),
    max(n.ended_at)
from {{ new }} as n
left join {{ old }} as o on o.session_id = n.session_id and o.user_id = n.user_id
group by n.user_id
on conflict (user_id) do update set
    session_count = t.session_count + excluded.session_count,
    total_events = t.total_events + excluded.total_events,
    total_purchases = t.total_purchases + excluded.total_purchases,
    converted_sessions = t.converted_sessions + excluded.converted_sessions,
    revenue = t.revenue + excluded.revenue,
    duration_seconds = t.duration_seconds + excluded.duration_seconds,
    first_seen_at = least(t.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(t.last_seen_at, excluded.last_seen_at);

{{ get_incremental_merge_sql(arg_dict) }}
{% endmacro %}
