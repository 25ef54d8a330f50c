-- Temp table market_option_candidates: market_option_sets with in_set_actual (the option is the occasion's
-- actual product: for coverage only, the set never depends on it) and the protocol's option prices
-- (docs/evaluation-protocol.md "Option prices"), computed exactly as sql/features/episode_options.sql does
-- (same running totals product_day_totals, same DECIMAL arithmetic): the mean unit_price and list unit price
-- over the product's purchases in days [d - $window_days, d + $window_days] leaving out the occasion's own
-- basket; where nothing remains, the price paid in this basket; where the product was not bought in the basket
-- either (common here: an own product not on sale around d), the product's mean over all its purchases.
-- A scenario's staged price / list_price override them. price_basis says which rule priced the option:
-- 'window', 'basket', 'overall' or 'scenario' (NULL: a product never purchased and not priced by a scenario).
create or replace temp table market_option_candidates as
with keyed as (
    select
        s.occasion_id,
        s.product_id,
        s.set_rank,
        s.source,
        o.category,
        o.basket_id,
        o.day,
        s.product_id = o.actual_product_id as in_set_actual,
        k.pidx
    from market_option_sets as s
    join market_occasion_rows as o on o.occasion_id = s.occasion_id
    left join option_products as k on k.product_id = s.product_id
),
product_days as (
    select distinct pidx, day from keyed where pidx is not null
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
own_basket as (
    select p.basket_id, p.product_id, p.unit_price, p.list_unit_price
    from episode_purchases as p
    semi join (select distinct basket_id from market_occasion_rows) as b on b.basket_id = p.basket_id
    where p.is_merchandise
),
priced as (
    select
        k.*,
        w.n - (own.basket_id is not null)::integer as n_rest,
        w.sum_price - coalesce(cast(own.unit_price as decimal(38, 10)), 0) as rest_price,
        w.sum_list_price - coalesce(cast(own.list_unit_price as decimal(38, 10)), 0) as rest_list_price,
        own.unit_price as own_price,
        own.list_unit_price as own_list_price,
        a.price as overall_price,
        a.list_price as overall_list_price
    from keyed as k
    left join windowed as w on w.pidx = k.pidx and w.day = k.day
    left join own_basket as own on own.basket_id = k.basket_id and own.product_id = k.product_id
    left join overall as a on a.pidx = k.pidx
),
protocol as (
    select
        p.*,
        case
            when p.n_rest > 0 then cast(p.rest_price as double) / p.n_rest
            else coalesce(p.own_price, p.overall_price)
        end as protocol_price,
        case
            when p.n_rest > 0 then cast(p.rest_list_price as double) / p.n_rest
            else coalesce(p.own_list_price, p.overall_list_price)
        end as protocol_list_price,
        case
            when p.n_rest > 0 then 'window'
            when p.own_price is not null then 'basket'
            when p.overall_price is not null then 'overall'
        end as protocol_basis
    from priced as p
)
select
    p.occasion_id,
    p.product_id,
    p.set_rank,
    p.source,
    p.in_set_actual,
    coalesce(sc.price, p.protocol_price) as price,
    coalesce(sc.list_price, p.protocol_list_price) as list_price,
    case when sc.price is not null or sc.list_price is not null then 'scenario' else p.protocol_basis end
        as price_basis
from protocol as p
left join (
    select category, product_id, any_value(price) as price, any_value(list_price) as list_price
    from market_scenario_products
    group by category, product_id
) as sc on sc.category = p.category and sc.product_id = p.product_id
