{#-
Canonical users, and what a build of int_user_activity_days hands the marts built on it.

The canonical user of an event is its identity's known user (the latest identify of the event's
user_id, streaming.identities), or else the event's user_id. A re-identification, a first
identify or a deletion changes which events a canonical user has: int_user_activity_days keeps,
per (user_id as sent, UTC day), the canonical user it is counted under (`counted_under`), and
its incremental build moves the rows of every id whose canonical user changed.

What only that build knows (where a moved row was counted before, which days a deleted user
had) it hands on through two queues, written by its pre-hook before it changes anything, in
its transaction, and emptied by each consuming mart's post-hook in the mart's transaction (a
failed mart build leaves its queue for the next one):
- `activity_user_recounts (model_name, user_id)`: canonical users that lost events (the user an
  id was counted under before it moved, a deleted user, the user a deleted id was counted under):
  funnel_progress recomputes them from all their events;
- `activity_date_recounts (model_name, activity_date)`: days whose active users or new users may
  have changed (days of new events, of moved or deleted rows, every day of a user that lost
  events, the first day of a user that gained some): daily_active_users recounts them, and
  retention_cohorts recomputes the cohorts of those dates.
Neither holds anything but user ids of users to recount and dates.
-#}

{#- The models that consume the queues, with the queue each reads. -#}
{% macro activity_recount_consumers() -%}
    {{ return({'users': ['funnel_progress'], 'dates': ['daily_active_users', 'retention_cohorts']}) }}
{%- endmacro %}

{% macro activity_user_recounts() -%}
    {{ target.schema }}.activity_user_recounts
{%- endmacro %}

{% macro activity_date_recounts() -%}
    {{ target.schema }}.activity_date_recounts
{%- endmacro %}

{#- on-run-start -#}
{% macro create_activity_recounts() %}
create table if not exists {{ activity_user_recounts() }} (
    model_name text   not null,
    user_id    bigint not null,
    primary key (model_name, user_id)
);
create table if not exists {{ activity_date_recounts() }} (
    model_name    text not null,
    activity_date date not null,
    primary key (model_name, activity_date)
);
comment on table {{ activity_user_recounts() }} is
    'Canonical users a mart must recompute in full (written by int_user_activity_days, emptied by the mart; macros/activity_recounts.sql).';
comment on table {{ activity_date_recounts() }} is
    'Days a mart must recount (written by int_user_activity_days, emptied by the mart; macros/activity_recounts.sql).'
{% endmacro %}

{#- The current known user of an anonymous id as a scalar subquery, NULL if none (a lateral join of
    the same: current_identity in macros/identity.sql): its pair with the latest identify, ties to
    the larger user id (stg_streaming__identities), by the primary key's index. -#}
{% macro identity_of(user_id_expr) -%}
    (select i.user_id from {{ source('streaming', 'identities') }} as i
     where i.anonymous_id = {{ user_id_expr }}
     order by i.identified_at desc, i.user_id desc limit 1)
{%- endmacro %}

{#- The canonical user of an event's user_id. -#}
{% macro canonical_user(user_id_expr) -%}
    coalesce({{ identity_of(user_id_expr) }}, {{ user_id_expr }})
{%- endmacro %}

{#- UTC day of a timestamptz, whatever the session's time zone. -#}
{% macro utc_date(ts) -%}
    (({{ ts }}) at time zone 'UTC')::date
{%- endmacro %}

{#- A consuming mart's pre-hook in its incremental builds: its queued users or dates as a temporary
    table (`pending_recounts`, one column `key`), and its own rows for them deleted (rebuilt from
    scratch by the model's SQL). A full build recomputes everything: nothing pending. -#}
{% macro take_activity_recounts(queue, key_column) %}
create temporary table pending_recounts on commit drop as
select {{ key_column }} as key
from {% if queue == 'users' %}{{ activity_user_recounts() }}{% else %}{{ activity_date_recounts() }}{% endif %}
where model_name = '{{ this.identifier }}' and {{ 'true' if is_incremental() else 'false' }};
analyze pending_recounts
{% endmacro %}

{#- A consuming mart's post-hook: what it took is done (in its transaction). -#}
{% macro clear_activity_recounts(queue) %}
delete from {% if queue == 'users' %}{{ activity_user_recounts() }}{% else %}{{ activity_date_recounts() }}{% endif %}
where model_name = '{{ this.identifier }}'
{% endmacro %}

{#- int_user_activity_days' pre-hook, in its incremental builds: what changed since its last build,
    as temporary tables its SQL reads (activity_new_days, activity_moves), the consumers' queues
    filled from its rows before they change, then a deleted user's rows dropped. -#}
{% macro prepare_activity_changes() %}
{%- if is_incremental() %}
{%- set consumers = activity_recount_consumers() %}
-- the days of the events appended since the last build
create temporary table activity_new_days on commit drop as
select user_id, {{ utc_date('occurred_at') }} as activity_date,
       min(occurred_at) as first_event_at, max(occurred_at) as last_event_at
from {{ source('streaming', 'event_log') }}
where {{ written_since_last_build() }}
group by 1, 2;

-- the kept rows of every id whose canonical user may have changed (an identify written since, or
-- the user it is counted under deleted since), and of every deleted user, with where they go
create temporary table activity_moves on commit drop as
with deleted as (
    select user_id from {{ source('streaming', 'deleted_users') }} where {{ written_since_last_build() }}
),
moving as (
    select anonymous_id as user_id from {{ source('streaming', 'identities') }} where {{ written_since_last_build() }}
    union
    select user_id from {{ this }} where counted_under in (select user_id from deleted)
    union
    select user_id from deleted
),
ids as (
    select user_id, {{ canonical_user('moving.user_id') }} as counted_under,
           user_id in (select user_id from deleted) as is_deleted
    from moving
)
select kept.user_id, kept.activity_date, kept.first_event_at, kept.last_event_at,
       kept.counted_under as was_counted_under, ids.counted_under, ids.is_deleted
from ids
join {{ this }} as kept using (user_id)
where ids.is_deleted or kept.counted_under <> ids.counted_under;

-- canonical users that lost events: every user a moved or deleted row was counted under
create temporary table activity_losers on commit drop as
select distinct was_counted_under as user_id from activity_moves;

-- canonical users that gained events: those of the new events, and where moved rows go
create temporary table activity_gainers on commit drop as
select {{ canonical_user('ids.user_id') }} as user_id
from (select distinct user_id from activity_new_days) as ids
union
select counted_under from activity_moves where not is_deleted;

{% for model_name in consumers['users'] %}
insert into {{ activity_user_recounts() }} (model_name, user_id)
select '{{ model_name }}', user_id from activity_losers
on conflict do nothing;
{% endfor %}

{% for model_name in consumers['dates'] %}
insert into {{ activity_date_recounts() }} (model_name, activity_date)
-- days with new events, days of moved or deleted rows
select '{{ model_name }}', activity_date from activity_new_days
union
select '{{ model_name }}', activity_date from activity_moves
union
-- every day of a user that lost events (its first day may move to any of them)
select '{{ model_name }}', kept.activity_date
from {{ this }} as kept where kept.counted_under in (select user_id from activity_losers)
union
-- the first day of a user that gained events (it may stop being its first)
select '{{ model_name }}', first_day.activity_date
from activity_gainers as g
cross join lateral (
    select kept.activity_date from {{ this }} as kept
    where kept.counted_under = g.user_id order by kept.activity_date limit 1
) as first_day
on conflict do nothing;
{% endfor %}

delete from {{ this }}
where user_id in (select user_id from activity_moves where is_deleted)
{%- else %}
select 'full build: nothing to hand on'
{%- endif %}
{% endmacro %}

{#- A consuming mart's pre-hook, after take_activity_recounts: its rows for what is pending go
    (the model's SQL rebuilds them from scratch). -#}
{% macro delete_pending_rows(column) %}
{%- if is_incremental() %}
delete from {{ this }} where {{ column }} in (select key from pending_recounts)
{%- else %}
select 'full build: nothing pending'
{%- endif %}
{% endmacro %}

{#- daily_active_users' pre-hook: the days a session written since its last build spans are
    recounted too (its first event moves earlier with a late event: the day it left and the day it
    joined both lie in that span). -#}
{% macro queue_session_days() %}
{%- if is_incremental() %}
insert into pending_recounts (key)
select generate_series({{ utc_date('first_event_at') }}, {{ utc_date('last_event_at') }}, interval '1 day')::date
from {{ source('streaming', 'sessions') }}
where {{ written_since_last_build() }}
{%- else %}
select 'full build: every day is counted'
{%- endif %}
{% endmacro %}

{#- funnel_progress' pre-hook, in its incremental builds: the time intervals to read (each new event
    since its last build, and each row of an id moved to another user since, widened by the longest
    funnel window, merged into disjoint intervals across users) and the ids of the users they
    concern, as analyzed temporary tables, so that the model reads event_log by BRIN per interval. -#}
{% macro prepare_funnel_intervals() %}
{%- if is_incremental() %}
{%- set minutes = var('funnels').values() | map(attribute='window_minutes') | max %}
{%- set window = "interval '" ~ minutes ~ " minutes'" %}
create temporary table funnel_spans on commit drop as
with new_events as (
    select user_id, occurred_at from {{ source('streaming', 'event_log') }}
    where {{ written_since_last_build() }}
),
new_ids as (
    select user_id, {{ canonical_user('ids.user_id') }} as canonical_id
    from (select distinct user_id from new_events) as ids
)
select new_ids.canonical_id, e.occurred_at - {{ window }} as lo, e.occurred_at + {{ window }} as hi
from new_events as e join new_ids using (user_id)
union all
select counted_under, first_event_at - {{ window }}, last_event_at + {{ window }}
from {{ ref('int_user_activity_days') }}
where moved_xid >= coalesce({{ last_build_watermark(this) }}, 0);

create temporary table funnel_intervals on commit drop as
select part, min(lo) as lo, max(hi) as hi
from (
    select lo, hi, count(*) filter (where starts) over (order by lo, hi rows unbounded preceding) as part
    from (
        select lo, hi,
            lo > max(hi) over (order by lo, hi rows between unbounded preceding and 1 preceding) is not false
                as starts
        from funnel_spans
    ) as s
) as islands
group by part;

-- every id counted under a user with a span
create temporary table funnel_gainer_ids on commit drop as
select distinct a.user_id, a.counted_under as canonical_id
from {{ ref('int_user_activity_days') }} as a
where a.counted_under in (select canonical_id from funnel_spans);

analyze funnel_intervals;
analyze funnel_gainer_ids
{%- else %}
select 'full build: every event is read'
{%- endif %}
{% endmacro %}
