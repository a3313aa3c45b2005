{#- One row per (funnel, step): the users who reached it, the share of the first step's, and the
    median time from the previous step. Rebuilt in full each run from funnel_progress (one row per
    funnel step: it reads a row per user, so it grows with users, not with history). -#}
{%- set funnels = var('funnels') -%}

with

progress as (

    select * from {{ ref('funnel_progress') }}

),

steps as (

    select * from (values
        {%- for name, funnel in funnels.items() %}
        {%- set last_funnel = loop.last %}
        {%- for step in funnel['steps'] %}
        ('{{ name }}'::text, {{ loop.index }}, '{{ step }}'::text){{ "," if not (last_funnel and loop.last) }}
        {%- endfor %}
        {%- endfor %}
    ) as s (funnel, step_number, step)

),

reached as (

    select
        steps.funnel,
        steps.step_number,
        steps.step,
        progress.user_id,
        case steps.step_number
            {%- for k in range(2, 1 + (funnels.values() | map(attribute='steps') | map('length') | max)) %}
            when {{ k }} then extract(epoch from progress.step_{{ k }}_at - progress.step_{{ k - 1 }}_at)
            {%- endfor %}
        end as seconds_from_previous
    from steps
    join progress on progress.funnel = steps.funnel and progress.furthest_step >= steps.step_number

),

conversion as (

    select
        steps.funnel,
        steps.step_number,
        steps.step,
        count(reached.user_id) as users,
        percentile_cont(0.5) within group (order by reached.seconds_from_previous)
            as median_seconds_from_previous

    from steps
    left join reached on reached.funnel = steps.funnel and reached.step_number = steps.step_number
    group by steps.funnel, steps.step_number, steps.step

)

select
    funnel,
    step_number,
    step,
    users,
    round(users::numeric / nullif(first_value(users) over (partition by funnel order by step_number), 0), 4)
        as share_of_first_step,
    round(median_seconds_from_previous::numeric, 3) as median_seconds_from_previous

from conversion
