with

source as (

    select *, {{ source_xid() }} as source_xid
    from {{ source('streaming', 'user_events') }}

),

renamed as (

    select
        ----------  ids
        user_id,
        event_type::text as event_type,

        ----------  numerics
        event_count,

        ----------  timestamps
        created_at as first_event_at,
        updated_at as last_event_at,

        ----------  change tracking
        source_xid

    from source

)

select * from renamed
