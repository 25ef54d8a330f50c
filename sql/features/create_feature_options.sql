-- Temp table feature_options: the staged options (feature_source_options) with the episode's integer keys
-- and the option's product and brand keys.
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
    e.day_before_window,
    k.pidx,
    k.bidx
from feature_source_options as o
join feature_episodes as e on e.episode_id = o.episode_id
join feature_keys as k on k.product_id = o.product_id
