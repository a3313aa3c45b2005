with

source as (

    select * from {{ source('streaming', 'event_log') }}

),

renamed as (

    select
        ----------  ids
        user_id,
        event_type::text as event_type,
        page,

        ----------  timestamps
        occurred_at,

        ----------  change tracking
        written_xid,
        written_xid::text::bigint as source_xid

    from source

)

select * from renamed
