-- Temp table feature_options: episode_options with the episode's integer keys and the option's product
-- and brand keys.
create or replace temp table feature_options as
select
    o.episode_id,
    o.product_id,
    o.price,
    o.list_price,
    e.eidx,
    e.cidx,
    e.catidx,
    e.day,
    e.day_before,
    k.pidx,
    k.bidx
from episode_options as o
join feature_episodes as e on e.episode_id = o.episode_id
join feature_keys as k on k.product_id = o.product_id
