{#-
user_engagement counts each canonical user's sessions over the ids that count under it (the user
itself, unless identified as another, and the anonymous ids whose latest identify named it:
macros/identity.sql). Its build keeps which canonical user each id was counted under, so that a
change to an id can recount the user it left as well as the one it joined, even when the
identify that linked them is gone (a deleted user's identities go with the user).

incremental_strategy='user_engagement': the build's rows (every canonical user to recount, with the
ids it now counts, `member_ids`) replace the mart's rows of those users, but for a user left with
no session, whose row goes; the ids are re-recorded under the users they now count under.
-#}

{% macro user_engagement_ids() -%}
    {{ target.schema }}.user_engagement_ids
{%- endmacro %}

{#- on-run-start -#}
{% macro create_user_engagement_ids() %}
create table if not exists {{ user_engagement_ids() }} (
    user_id           bigint primary key,
    canonical_user_id bigint not null
);
create index if not exists user_engagement_ids_canonical_idx on {{ user_engagement_ids() }} (canonical_user_id);
comment on table {{ user_engagement_ids() }} is
    'Per id with sessions: the canonical user user_engagement counted it under (macros/user_engagement_ids.sql).'
{% endmacro %}

{#- user_engagement's pre-hook: a build in full records every id afresh. -#}
{% macro fill_user_engagement_ids_if_full_build() %}
{%- if not is_incremental() %}
truncate {{ user_engagement_ids() }};
insert into {{ user_engagement_ids() }} (user_id, canonical_user_id)
select totals.user_id, coalesce(identities.user_id, totals.user_id)
from {{ user_session_totals() }} as totals
left join {{ ref('stg_streaming__identities') }} as identities on identities.anonymous_id = totals.user_id
{%- else %}
select 'incremental build: user_engagement_ids are kept by the strategy'
{%- endif %}
{% endmacro %}

{% macro get_incremental_user_engagement_sql(arg_dict) %}
{%- set new = arg_dict['temp_relation'] -%}
{%- set mart = arg_dict['target_relation'] -%}
{%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
delete from {{ user_engagement_ids() }}
where canonical_user_id in (select user_id from {{ new }})
   or user_id in (select unnest(member_ids) from {{ new }});

insert into {{ user_engagement_ids() }} (user_id, canonical_user_id)
select member_id, user_id from {{ new }}, unnest(member_ids) as member_id;

delete from {{ mart }} where user_id in (select user_id from {{ new }});

insert into {{ mart }} ({{ columns }})
select {{ columns }} from {{ new }} where session_count > 0
{% endmacro %}
