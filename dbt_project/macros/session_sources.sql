{#-
traffic_sources' own state, kept by its build so that a minute's build costs the sessions that
changed, not the sources' history ('direct' holds most sessions):
- session_sources: per session (session_id, user id), its first-touch source, medium and campaign,
  whether it converted, its revenue, and the canonical user it counts under (macros/identity.sql);
- source_users: per (source, medium, campaign, canonical user), that user's sessions there, so
  that a source's distinct users change by one when such a row appears or goes.

A build (incremental_strategy='traffic_sources'), in its transaction, turns every change into
signed rows (-1 for the version it kept, +1 for the new one): the sessions of users deleted since
the last build (-1), the sessions of ids identified since or counted under a deleted user (-1 under
the old canonical user, +1 under the new), the sessions written since (-1 for the kept version, +1
for the new: a late earlier event may have moved the first touch to another source). Their sums
are added to source_users and to the mart; a row whose sessions reach 0 goes.
A build in full fills both from every session in its pre-hook, and the mart from them.

Source, medium and campaign, as GA and Matomo name them: source = utm_source, else the referrer's
host, else 'direct'; medium = utm_medium, else 'referral' for a referrer, else '(none)'; campaign =
utm_campaign, else '(none)'. Empty utm values count as absent.
-#}

{% macro session_sources() -%}
    {{ target.schema }}.session_sources
{%- endmacro %}

{% macro source_users() -%}
    {{ target.schema }}.source_users
{%- endmacro %}

{#- on-run-start -#}
{% macro create_session_sources() %}
create table if not exists {{ session_sources() }} (
    session_id        uuid           not null,
    user_id           bigint         not null,
    source            text           not null,
    medium            text           not null,
    campaign          text           not null,
    canonical_user_id bigint         not null,
    converted         boolean        not null,
    revenue           numeric(38, 2) not null,
    primary key (session_id, user_id)
);
create index if not exists session_sources_user_id_idx on {{ session_sources() }} (user_id);
create index if not exists session_sources_canonical_idx on {{ session_sources() }} (canonical_user_id);
comment on table {{ session_sources() }} is
    'Per session: its first-touch source and the canonical user it counts under, kept by traffic_sources'' build (macros/session_sources.sql).';
create table if not exists {{ source_users() }} (
    source            text   not null,
    medium            text   not null,
    campaign          text   not null,
    canonical_user_id bigint not null,
    sessions          bigint not null
);
-- keyed by a hash of (source, medium, campaign): a referrer's host may be longer than a btree entry can be
create unique index if not exists source_users_key_idx on {{ source_users() }} (md5(source || chr(10) || medium || chr(10) || campaign), canonical_user_id);
comment on table {{ source_users() }} is
    'Per (source, medium, campaign, canonical user): sessions, kept by traffic_sources'' build (macros/session_sources.sql).'
{% endmacro %}

{#- The sessions this build reads, with their first touch and canonical user. -#}
{% macro session_first_touch() %}
with

sessions as (

    select
        session_id,
        user_id,
        nullif(utm_source, '') as utm_source,
        nullif(utm_medium, '') as utm_medium,
        nullif(utm_campaign, '') as utm_campaign,
        nullif(referrer_host, '') as referrer_host,
        purchase_count > 0 as converted,
        revenue
    from {{ source('streaming', 'sessions') }}
    where {{ written_for_this_build() }}

)

select
    sessions.session_id,
    sessions.user_id,
    coalesce(sessions.utm_source, sessions.referrer_host, 'direct')::text as source,
    coalesce(
        sessions.utm_medium,
        case when sessions.utm_source is null and sessions.referrer_host is not null then 'referral' end,
        '(none)'
    )::text as medium,
    coalesce(sessions.utm_campaign, '(none)')::text as campaign,
    coalesce(identity.user_id, sessions.user_id) as canonical_user_id,
    sessions.converted,
    sessions.revenue::numeric(38, 2) as revenue
from sessions
{{ current_identity('sessions.user_id') }}
{% endmacro %}

{#- traffic_sources' pre-hook: a build in full starts its state afresh from every session. -#}
{% macro fill_session_sources_if_full_build() %}
{%- if not is_incremental() %}
truncate {{ session_sources() }}, {{ source_users() }};
insert into {{ session_sources() }}
    (session_id, user_id, source, medium, campaign, canonical_user_id, converted, revenue)
{{ session_first_touch() }};
insert into {{ source_users() }} (source, medium, campaign, canonical_user_id, sessions)
select source, medium, campaign, canonical_user_id, count(*)
from {{ session_sources() }}
group by source, medium, campaign, canonical_user_id
{%- else %}
select 'incremental build: session_sources and source_users are added to'
{%- endif %}
{% endmacro %}

{#- The mart's rows from session_sources and source_users (a build in full). -#}
{% macro traffic_sources_from_state() %}
with

per_source as (

    select
        source,
        medium,
        campaign,
        count(*)::bigint as sessions,
        count(*) filter (where converted)::bigint as converted_sessions,
        sum(revenue)::numeric(38, 2) as revenue
    from {{ session_sources() }}
    group by source, medium, campaign

),

users as (

    select source, medium, campaign, count(*)::bigint as users
    from {{ source_users() }}
    group by source, medium, campaign

)

select
    per_source.source,
    per_source.medium,
    per_source.campaign,
    per_source.sessions,
    users.users,
    per_source.converted_sessions,
    round(per_source.converted_sessions::numeric / per_source.sessions, 4) as conversion_rate,
    per_source.revenue
from per_source
join users using (source, medium, campaign)
{% endmacro %}

{% macro get_incremental_traffic_sources_sql(arg_dict) %}
{%- set new = arg_dict['temp_relation'] -%}
{%- set mart = arg_dict['target_relation'] -%}
{%- set columns = 'session_id, user_id, source, medium, campaign, canonical_user_id, converted, revenue' -%}
create temporary table traffic_sources_changes (
    source text, medium text, campaign text, canonical_user_id bigint,
    sessions bigint, converted bigint, revenue numeric(38, 2)
) on commit drop;

-- 1. users deleted since the last build: their sessions go
with gone as (
    delete from {{ session_sources() }}
    where user_id in ({{ users_deleted_for_this_build() }})
    returning *
)
insert into traffic_sources_changes
select source, medium, campaign, canonical_user_id, -1, -converted::int, -revenue from gone;

-- 2. ids identified since, or counted under a deleted user: their sessions move to the current canonical user
create temporary table traffic_sources_moved (
    source text, medium text, campaign text, converted boolean, revenue numeric(38, 2),
    new_user_id bigint, old_user_id bigint
) on commit drop;

with changed as (
    {{ ids_identified_for_this_build() }}
    union
    select user_id from {{ session_sources() }}
    where canonical_user_id in ({{ users_deleted_for_this_build() }})
),
current_users as (
    select changed.user_id, coalesce(identity.user_id, changed.user_id) as canonical_user_id
    from changed
    {{ current_identity('changed.user_id') }}
),
moved as (
    update {{ session_sources() }} as s
    set canonical_user_id = c.canonical_user_id
    from current_users as c
    where s.user_id = c.user_id and s.canonical_user_id <> c.canonical_user_id
    returning s.source, s.medium, s.campaign, s.converted, s.revenue,
              c.canonical_user_id as new_user_id,
              (select canonical_user_id from {{ session_sources() }} as before
               where before.session_id = s.session_id and before.user_id = s.user_id) as old_user_id
)
insert into traffic_sources_moved select * from moved;

insert into traffic_sources_changes
select source, medium, campaign, old_user_id, -1, -converted::int, -revenue from traffic_sources_moved
union all
select source, medium, campaign, new_user_id, 1, converted::int, revenue from traffic_sources_moved;

-- 3. sessions written since: the kept version goes, the new one comes
with replaced as (
    delete from {{ session_sources() }} as s
    using {{ new }} as n
    where s.session_id = n.session_id and s.user_id = n.user_id
    returning s.*
)
insert into traffic_sources_changes
select source, medium, campaign, canonical_user_id, -1, -converted::int, -revenue from replaced;

insert into {{ session_sources() }} ({{ columns }})
select {{ columns }} from {{ new }};

insert into traffic_sources_changes
select source, medium, campaign, canonical_user_id, 1, converted::int, revenue from {{ new }};

-- 4. per (source, user): sessions added; a user appears at a source with a new row, leaves it at 0
create temporary table traffic_sources_user_changes (
    source text, medium text, campaign text, canonical_user_id bigint, users int, emptied boolean
) on commit drop;

with deltas as (
    select source, medium, campaign, canonical_user_id, sum(sessions) as sessions
    from traffic_sources_changes
    group by source, medium, campaign, canonical_user_id
    having sum(sessions) <> 0
),
applied as (
    insert into {{ source_users() }} as t (source, medium, campaign, canonical_user_id, sessions)
    select source, medium, campaign, canonical_user_id, sessions from deltas
    on conflict (md5(source || chr(10) || medium || chr(10) || campaign), canonical_user_id) do update
        set sessions = t.sessions + excluded.sessions
    returning t.source, t.medium, t.campaign, t.canonical_user_id, t.sessions, (t.xmax = 0) as inserted
)
insert into traffic_sources_user_changes
select
    source, medium, campaign, canonical_user_id,
    case when inserted then 1 when sessions = 0 then -1 else 0 end as users,
    sessions = 0 as emptied
from applied;

delete from {{ source_users() }} as t
using traffic_sources_user_changes as c
where c.emptied
  and md5(t.source || chr(10) || t.medium || chr(10) || t.campaign)
      = md5(c.source || chr(10) || c.medium || chr(10) || c.campaign)
  and t.canonical_user_id = c.canonical_user_id;

-- 5. the mart: every changed source's sums
with per_source as (
    select source, medium, campaign, sum(sessions) as sessions, sum(converted) as converted, sum(revenue) as revenue
    from traffic_sources_changes
    group by source, medium, campaign
),
users as (
    select source, medium, campaign, sum(users) as users
    from traffic_sources_user_changes
    group by source, medium, campaign
)
insert into {{ mart }} as t (source, medium, campaign, sessions, users, converted_sessions, conversion_rate, revenue)
select
    p.source, p.medium, p.campaign, p.sessions, coalesce(u.users, 0), p.converted,
    round(p.converted::numeric / nullif(p.sessions, 0), 4), p.revenue
from per_source as p
left join users as u using (source, medium, campaign)
on conflict ((md5(source || chr(10) || medium || chr(10) || campaign))) do update set
    sessions = t.sessions + excluded.sessions,
    users = t.users + excluded.users,
    converted_sessions = t.converted_sessions + excluded.converted_sessions,
    conversion_rate = round(
        (t.converted_sessions + excluded.converted_sessions)::numeric
        / nullif(t.sessions + excluded.sessions, 0), 4),
    revenue = t.revenue + excluded.revenue;

delete from {{ mart }} as t
using traffic_sources_changes as c
where t.sessions = 0
  and md5(t.source || chr(10) || t.medium || chr(10) || t.campaign)
      = md5(c.source || chr(10) || c.medium || chr(10) || c.campaign)
{% endmacro %}
