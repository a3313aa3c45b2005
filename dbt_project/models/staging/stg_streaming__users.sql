with

source as (

    select *, {{ source_xid() }} as source_xid
    from {{ source('streaming', 'users') }}

),

renamed as (

    select
        ----------  ids
        user_id,

        ----------  text
        name as user_name,
        email,
        country::text as country_code,
        plan::text as plan,

        ----------  dates
        signup_date as signed_up_on,
        updated_at as profile_updated_at,

        ----------  change tracking
        source_xid

    from source

)

select * from renamed
