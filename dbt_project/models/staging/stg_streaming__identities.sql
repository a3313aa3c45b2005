with

source as (

    select *, {{ source_xid() }} as source_xid
    from {{ source('streaming', 'identities') }}

),

-- The current mapping: each anonymous id's pair with the latest identify (ties: larger user id).
current_pair as (

    select distinct on (anonymous_id)
        ----------  ids
        anonymous_id,
        user_id,

        ----------  timestamps
        identified_at,

        ----------  change tracking
        written_xid

    from source
    order by anonymous_id, identified_at desc, user_id desc

)

select * from current_pair
