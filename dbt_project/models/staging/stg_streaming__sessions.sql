with

source as (

    select *, {{ source_xid() }} as source_xid
    from {{ source('streaming', 'sessions') }}

),

renamed as (

    select
        ----------  ids
        session_id,
        user_id,

        ----------  numerics
        event_count,
        purchase_count,
        revenue,

        ----------  timestamps
        first_event_at as started_at,
        last_event_at as ended_at,

        ----------  change tracking
        source_xid,
        written_xid

    from source

)

select * from renamed
