-- The shares of event_type_distribution add up to 1 (unless there are no events at all).
select sum(share_of_events) as total_share
from {{ ref('event_type_distribution') }}
having abs(sum(share_of_events) - 1) > 1e-9
