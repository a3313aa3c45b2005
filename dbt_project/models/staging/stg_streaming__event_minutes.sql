with

source as (

    select *, {{ source_xid() }} as source_xid
    from {{ source('streaming', 'event_minutes') }}

),

renamed as (

    select
        ----------  ids
        minute as event_minute,
        event_type::text as event_type,

        ----------  numerics
        event_count,
        revenue,

        ----------  change tracking
        source_xid

    from source

)

select * from renamed
