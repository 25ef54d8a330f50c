-- Builds episode_options: the choice set of every decision episode (actual product + drawn negatives),
-- positions 1..K in product_id text order (pidx follows that order), with each option's mean unit_price and
-- list unit price over its purchases in days [day - $window_days, day + $window_days] leaving out the
-- episode's own basket; where nothing remains, the price paid in this basket (then, an edge that cannot occur
-- with consistent data, the product's mean over all its purchases).
create or replace table episode_options as
with sets as (
    select e.eidx, e.day, e.chosen_pidx, list_sort(list_prepend(e.chosen_pidx, n.negatives)) as option_ids
    from episode_heads as e
    join episode_negatives as n on n.eidx = e.eidx
    where len(n.negatives) >= 1
),
options as (
    select
        eidx,
        day,
        chosen_pidx,
        unnest(option_ids) as pidx,
        unnest(generate_series(1, len(option_ids))) as position
    from sets
),
product_days as (
    select distinct pidx, day from options
),
windowed as (
    select
        d.pidx,
        d.day,
        coalesce(hi.cum_n, 0) - coalesce(lo.cum_n, 0) as n,
        coalesce(hi.cum_price, 0) - coalesce(lo.cum_price, 0) as sum_price,
        coalesce(hi.cum_list_price, 0) - coalesce(lo.cum_list_price, 0) as sum_list_price
    from product_days as d
    asof left join product_day_totals as hi
        on hi.pidx = d.pidx and d.day + $window_days::integer >= hi.day
    asof left join product_day_totals as lo
        on lo.pidx = d.pidx and d.day - ($window_days::integer + 1) >= lo.day
),
overall as (
    select
        pidx,
        cast(arg_max(cum_price, day) as double) / arg_max(cum_n, day) as price,
        cast(arg_max(cum_list_price, day) as double) / arg_max(cum_n, day) as list_price
    from product_day_totals
    group by pidx
),
priced as (
    select
        o.eidx,
        o.pidx,
        o.position,
        o.pidx = o.chosen_pidx as is_chosen,
        w.n - (own.eidx is not null)::integer as n_rest,
        w.sum_price - coalesce(cast(own.unit_price as decimal(38, 10)), 0) as rest_price,
        w.sum_list_price - coalesce(cast(own.list_unit_price as decimal(38, 10)), 0) as rest_list_price,
        own.unit_price as own_price,
        own.list_unit_price as own_list_price
    from options as o
    join windowed as w on w.pidx = o.pidx and w.day = o.day
    left join episode_own_purchases as own on own.eidx = o.eidx and own.pidx = o.pidx
)
select
    e.episode_id,
    k.product_id,
    cast(p.position as integer) as position,
    p.is_chosen,
    case when p.n_rest > 0 then cast(p.rest_price as double) / p.n_rest else coalesce(p.own_price, a.price) end
        as price,
    case
        when p.n_rest > 0 then cast(p.rest_list_price as double) / p.n_rest
        else coalesce(p.own_list_price, a.list_price)
    end as list_price
from priced as p
join episode_heads as e on e.eidx = p.eidx
join option_products as k on k.pidx = p.pidx
left join overall as a on a.pidx = p.pidx
