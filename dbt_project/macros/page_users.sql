{#-
Per (page, user id): the events top_pages counts, kept by top_pages' own build, so that a build
reads only the events appended since the last one (streaming.event_log has no index by user, and
a page's distinct users cannot be added up from counts).

Each row keeps the canonical user it is counted under (macros/identity.sql). A build, in its
transaction (incremental_strategy='top_pages'):
1. drops the rows of users deleted since the last build (their events are gone from event_log);
2. moves the rows of ids identified since, and of ids counted under a deleted user, to their
   current canonical user;
3. adds the new events' counts;
4. recounts the pages those rows are on from page_users: views, clicks and purchases are sums,
   users the page's distinct canonical users (an index range on (md5(page), canonical_user_id)).
Pages are keyed by md5(page) in the indexes: a page may be longer than a btree entry can be.
A build in full (first build, --full-refresh) fills page_users from every event in its pre-hook,
and the mart from page_users.
-#}

{% macro page_users() -%}
    {{ target.schema }}.page_users
{%- endmacro %}

{#- on-run-start -#}
{% macro create_page_users() %}
create table if not exists {{ page_users() }} (
    page              text   not null,
    user_id           bigint not null,
    canonical_user_id bigint not null,
    views             bigint not null,
    clicks            bigint not null,
    purchases         bigint not null,
    events            bigint not null
);
-- keyed by md5(page): a page of 2,048 multibyte characters is longer than a btree entry may be
create unique index if not exists page_users_key_idx on {{ page_users() }} (md5(page), user_id);
create index if not exists page_users_user_id_idx on {{ page_users() }} (user_id);
create index if not exists page_users_canonical_idx on {{ page_users() }} (canonical_user_id);
create index if not exists page_users_page_canonical_idx on {{ page_users() }} (md5(page), canonical_user_id);
comment on table {{ page_users() }} is
    'Per (page, user id): events on the page and the canonical user they count under, kept by top_pages'' build (macros/page_users.sql).'
{% endmacro %}

{#- The events of the pages this build reads, per (page, user id), with the id's canonical user. -#}
{% macro page_user_counts() %}
with

events as (

    select page, user_id, event_type
    from {{ source('streaming', 'event_log') }}
    where page is not null and {{ written_for_this_build() }}

),

per_user as (

    select
        page,
        user_id,
        count(*) filter (where event_type = 'view') as views,
        count(*) filter (where event_type = 'click') as clicks,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(*) as events
    from events
    group by page, user_id

)

select
    per_user.page,
    per_user.user_id,
    coalesce(identity.user_id, per_user.user_id) as canonical_user_id,
    per_user.views,
    per_user.clicks,
    per_user.purchases,
    per_user.events
from per_user
{{ current_identity('per_user.user_id') }}
{% endmacro %}

{#- top_pages' pre-hook: a build in full starts page_users afresh from every event. -#}
{% macro fill_page_users_if_full_build() %}
{%- if not is_incremental() %}
truncate {{ page_users() }};
insert into {{ page_users() }} (page, user_id, canonical_user_id, views, clicks, purchases, events)
{{ page_user_counts() }}
{%- else %}
select 'incremental build: page_users are added to'
{%- endif %}
{% endmacro %}

{#- The pages' rows, from page_users (`where` restricts the pages). -#}
{% macro top_pages_from_page_users(where='true') %}
select
    page,
    sum(views)::bigint as views,
    count(distinct canonical_user_id)::bigint as users,
    sum(clicks)::bigint as clicks,
    sum(purchases)::bigint as purchases
from {{ page_users() }}
where {{ where }}
group by page
{% endmacro %}

{% macro get_incremental_top_pages_sql(arg_dict) %}
{%- set new = arg_dict['temp_relation'] -%}
{%- set mart = arg_dict['target_relation'] -%}
create temporary table top_pages_touched (page text) on commit drop;

with deleted as (
    delete from {{ page_users() }}
    where user_id in ({{ users_deleted_for_this_build() }})
    returning page
)
insert into top_pages_touched select page from deleted;

with moved as (
    update {{ page_users() }} as p
    set canonical_user_id = coalesce(identity.user_id, p.user_id)
    from (
        {{ ids_identified_for_this_build() }}
        union
        select user_id from {{ page_users() }}
        where canonical_user_id in ({{ users_deleted_for_this_build() }})
    ) as changed
    {{ current_identity('changed.user_id') }}
    where p.user_id = changed.user_id
      and p.canonical_user_id <> coalesce(identity.user_id, p.user_id)
    returning p.page
)
insert into top_pages_touched select page from moved;

with added as (
    insert into {{ page_users() }} as t (page, user_id, canonical_user_id, views, clicks, purchases, events)
    select page, user_id, canonical_user_id, views, clicks, purchases, events from {{ new }}
    on conflict (md5(page), user_id) do update set
        canonical_user_id = excluded.canonical_user_id,
        views = t.views + excluded.views,
        clicks = t.clicks + excluded.clicks,
        purchases = t.purchases + excluded.purchases,
        events = t.events + excluded.events
    returning t.page
)
insert into top_pages_touched select page from added;

delete from {{ mart }} where md5(page) in (select md5(page) from top_pages_touched);

insert into {{ mart }} (page, views, users, clicks, purchases)
{{ top_pages_from_page_users('md5(page) in (select md5(page) from top_pages_touched)') }}
{% endmacro %}
