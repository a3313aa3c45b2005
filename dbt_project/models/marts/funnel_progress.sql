{#- One row per (funnel, canonical user): how far the user got in the funnel and when each step
    was first reached (definition: funnel_progress.yml). Funnels: var `funnels` (dbt_project.yml).
    Incremental: a new sequence contains an event new since the last build (or an event of an id
    that moved to the user), so it lies within a window of it: only the events within a window of
    those are read (BRIN on occurred_at, intervals merged across users), for their canonical users,
    and merged with the kept rows (furthest: greatest, times: least). Users that lost events (a
    re-identification, a deletion: the queue int_user_activity_days fills) are recomputed from all
    their events, read by their activity days' time ranges. -#}
{%- set funnels = var('funnels') -%}
{%- set ns = namespace(types=[], max_steps=0, max_window=0) -%}
{%- for name, funnel in funnels.items() -%}
    {%- for step in funnel['steps'] -%}
        {%- if step not in ns.types -%}{%- set ns.types = ns.types + [step] -%}{%- endif -%}
    {%- endfor -%}
    {%- set ns.max_steps = [ns.max_steps, funnel['steps'] | length] | max -%}
    {%- set ns.max_window = [ns.max_window, funnel['window_minutes']] | max -%}
{%- endfor -%}
{%- set window = "interval '" ~ ns.max_window ~ " minutes'" -%}
-- depends_on: {{ ref('int_user_activity_days') }}
-- depends_on: {{ ref('stg_streaming__identities') }}
{{
    config(
        materialized='incremental',
        unique_key=['funnel', 'user_id'],
        incremental_strategy='merge',
        indexes=[
            {'columns': ['funnel', 'user_id'], 'unique': True},
            {'columns': ['user_id']},
            {'columns': ['build_xid']},
        ],
        pre_hook=[
            "{{ take_activity_recounts('users', 'user_id') }}",
            "{{ delete_pending_rows('user_id') }}",
            "{{ prepare_funnel_intervals() }}",
            "set local enable_mergejoin = off",
        ],
        post_hook="{{ clear_activity_recounts('users') }}"
    )
}}

with

{% if is_incremental() %}

activity as not materialized (

    select * from {{ ref('int_user_activity_days') }}

),

-- Users that lost events: all their events, read by the time ranges of their ids' activity days.
recount_events as (

    select a.counted_under as canonical_id, 0 as part, e.occurred_at, e.event_type
    from activity as a
    cross join lateral (
        select occurred_at, event_type from {{ source('streaming', 'event_log') }} as e
        where e.occurred_at between a.first_event_at and a.last_event_at and e.user_id = a.user_id
        offset 0  -- a BRIN range per activity day, not one scan of the whole log
    ) as e
    where a.counted_under in (select key from pending_recounts)

),

-- Sequences are followed within one interval (part), where every event in between is read.
gain_events as (

    select g.canonical_id, i.part, e.occurred_at, e.event_type
    from funnel_intervals as i
    cross join lateral (
        select user_id, occurred_at, event_type from {{ source('streaming', 'event_log') }} as e
        where e.occurred_at between i.lo and i.hi
        offset 0  -- a BRIN range per interval
    ) as e
    join funnel_gainer_ids as g on g.user_id = e.user_id

),

events as (

    select * from recount_events
    union all
    select * from gain_events

),

{% else %}

events as (

    select coalesce(identities.user_id, e.user_id) as canonical_id, 0 as part, e.occurred_at, e.event_type
    from {{ source('streaming', 'event_log') }} as e
    left join {{ ref('stg_streaming__identities') }} as identities on identities.anonymous_id = e.user_id

),

{% endif %}

-- For each event: the time of the next event of each step type strictly after it.
nexts as (

    select
        canonical_id,
        part,
        occurred_at,
        event_type
        {%- for t in ns.types %},
        min(occurred_at) filter (where event_type = '{{ t }}') over later as next_{{ loop.index }}
        {%- endfor %}
    from events
    -- descending, the frame only grows: a running minimum, not one recomputed per row
    window later as (
        partition by canonical_id, part order by occurred_at desc
        range between unbounded preceding and interval '1 microsecond' preceding
    )

),

at_time as (

    select distinct on (canonical_id, part, occurred_at) * from nexts

),

{% for name, funnel in funnels.items() %}
{%- set f = loop.index %}
{%- set steps = funnel['steps'] %}
{%- set w = "interval '" ~ funnel['window_minutes'] ~ " minutes'" %}
-- funnel {{ name }}: from each start (a step-1 event), each next step is the earliest event of its
-- type after the previous step and within the window from the start.
f{{ f }}_step_1 as (

    select canonical_id, part, occurred_at as step_1_at
    from nexts where event_type = '{{ steps[0] }}'

),
{%- for step in steps[1:] %}
{%- set k = loop.index + 1 %}

f{{ f }}_step_{{ k }} as (

    select s.*,
        case
            when at_time.next_{{ ns.types.index(step) + 1 }} <= s.step_1_at + {{ w }}
                then at_time.next_{{ ns.types.index(step) + 1 }}
        end as step_{{ k }}_at
    from f{{ f }}_step_{{ k - 1 }} as s
    left join at_time
        on at_time.canonical_id = s.canonical_id and at_time.part = s.part
        and at_time.occurred_at = s.step_{{ k - 1 }}_at

),
{%- endfor %}

f{{ f }}_progress as (

    select
        '{{ name }}'::text as funnel,
        canonical_id as user_id,
        case
            {%- for k in range(steps | length, 0, -1) %}
            when step_{{ k }}_at is not null then {{ k }}
            {%- endfor %}
        end as furthest_step
        {%- for k in range(1, ns.max_steps + 1) %},
        {% if k <= steps | length %}step_{{ k }}_at{% else %}null::timestamptz{% endif %} as step_{{ k }}_at
        {%- endfor %}
    from f{{ f }}_step_{{ steps | length }}

),
{% endfor %}

sequences as (

    {% for name, funnel in funnels.items() -%}
    select * from f{{ loop.index }}_progress
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

users as (

    select distinct e.canonical_id as user_id, f.funnel
    from events as e
    cross join (values {% for name in funnels %}('{{ name }}'::text){{ ", " if not loop.last }}{% endfor %}) as f(funnel)

),

progress as (

    select
        users.funnel,
        users.user_id,
        coalesce(max(s.furthest_step), 0) as furthest_step
        {%- for k in range(1, ns.max_steps + 1) %},
        min(s.step_{{ k }}_at) as step_{{ k }}_at
        {%- endfor %}
    from users
    left join sequences as s on s.funnel = users.funnel and s.user_id = users.user_id
    group by users.funnel, users.user_id

),

merged as (

    select
        p.funnel,
        p.user_id,
        {% if is_incremental() -%}
        greatest(p.furthest_step, kept.furthest_step) as furthest_step,
        {%- for k in range(1, ns.max_steps + 1) %}
        least(p.step_{{ k }}_at, kept.step_{{ k }}_at) as step_{{ k }}_at,
        {%- endfor %}
        {%- else -%}
        p.furthest_step,
        {%- for k in range(1, ns.max_steps + 1) %}
        p.step_{{ k }}_at,
        {%- endfor %}
        {%- endif %}
        {{ build_xid() }} as build_xid
    from progress as p
    {% if is_incremental() %}
    left join {{ this }} as kept on kept.funnel = p.funnel and kept.user_id = p.user_id
    {% endif %}

)

select * from merged
