-- Builds episode_options: the choice set of every decision episode (actual product + drawn negatives),
-- positions 1..K in product_id text order, with each option's mean unit_price and list unit price over its
-- purchases in days [day - $window_days, day + $window_days] leaving out the episode's own basket; where
-- nothing remains, the price paid in this basket (then, an edge that cannot occur with consistent data, the
-- product's mean over all its purchases).
create or replace table episode_options as
with sets as (
    select
        e.episode_id,
        e.basket_id,
        e.day,
        e.chosen_product_id,
        list_sort(list_prepend(e.chosen_product_id, n.negatives)) as option_ids
    from decision_episodes as e
    join episode_negatives as n on n.episode_id = e.episode_id
),
options as (
    select
        episode_id,
        basket_id,
        day,
        chosen_product_id,
        unnest(option_ids) as product_id,
        unnest(generate_series(1, len(option_ids))) as position
    from sets
),
product_days as (
    select distinct product_id, day from options
),
windowed as (
    select
        d.product_id,
        d.day,
        coalesce(hi.cum_n, 0) - coalesce(lo.cum_n, 0) as n,
        coalesce(hi.cum_price, 0) - coalesce(lo.cum_price, 0) as sum_price,
        coalesce(hi.cum_list_price, 0) - coalesce(lo.cum_list_price, 0) as sum_list_price
    from product_days as d
    asof left join product_day_totals as hi
        on hi.product_id = d.product_id and d.day + $window_days::integer >= hi.day
    asof left join product_day_totals as lo
        on lo.product_id = d.product_id and d.day - ($window_days::integer + 1) >= lo.day
),
overall as (
    select
        product_id,
        cast(sum(sum_price) as double) / sum(n) as price,
        cast(sum(sum_list_price) as double) / sum(n) as list_price
    from product_day_totals
    group by product_id
),
priced as (
    select
        o.episode_id,
        o.product_id,
        o.position,
        o.product_id = o.chosen_product_id as is_chosen,
        w.n - (own.basket_id is not null)::integer as n_rest,
        w.sum_price - coalesce(cast(own.unit_price as decimal(38, 10)), 0) as rest_price,
        w.sum_list_price - coalesce(cast(own.list_unit_price as decimal(38, 10)), 0) as rest_list_price,
        own.unit_price as own_price,
        own.list_unit_price as own_list_price
    from options as o
    join windowed as w on w.product_id = o.product_id and w.day = o.day
    left join episode_purchases as own on own.basket_id = o.basket_id and own.product_id = o.product_id
)
select
    p.episode_id,
    p.product_id,
    cast(p.position as integer) as position,
    p.is_chosen,
    case when p.n_rest > 0 then cast(p.rest_price as double) / p.n_rest else coalesce(p.own_price, a.price) end as price,
    case
        when p.n_rest > 0 then cast(p.rest_list_price as double) / p.n_rest else coalesce(p.own_list_price, a.list_price)
    end as list_price
from priced as p
left join overall as a on a.product_id = p.product_id
