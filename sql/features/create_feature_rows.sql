-- Temp view feature_rows: the features of every staged option (feature_options), from history strictly
-- before the episode's day d only (docs/evaluation-protocol.md): popularity, the customer's past purchases,
-- prices and reference prices. Window sums come from running totals through ASOF joins
-- (sum over [a, b] = cum(<= b) - cum(<= a - 1)). A view, so option_features and the market's options
-- (sql/market/market_options.sql) read the one definition without copying it.
create or replace temp view feature_rows as
with brand_days as (
    select distinct eidx, cidx, catidx, bidx, day_before from feature_options where bidx is not null
),
brand_history as (
    select d.eidx, d.bidx, h.cum_n as cust_brand_purchases
    from brand_days as d
    asof join customer_brand_days as h
        on h.cidx = d.cidx and h.catidx = d.catidx and h.bidx = d.bidx and d.day_before >= h.day
),
joined as (
    select
        o.episode_id,
        o.product_id,
        o.price,
        o.list_price,
        coalesce(hi.cum_n, 0) - coalesce(lo.cum_n, 0) as pop_28d,
        coalesce(hi.cum_n, 0) as pop_total,
        coalesce(cp.cum_n, 0) as cust_product_purchases,
        coalesce(bh.cust_brand_purchases, 0) as cust_brand_purchases,
        e.cust_category_purchases,
        o.day - cp.day as days_since,
        e.mean_price,
        coalesce(
            cast(cp.cum_price as double) / cp.cum_n,
            case
                when hi.cum_n > coalesce(lo.cum_n, 0)
                    then cast(hi.cum_price - coalesce(lo.cum_price, 0) as double) / (hi.cum_n - coalesce(lo.cum_n, 0))
            end,
            o.price
        ) as ref_price,
        e.cust_mean_qty,
        case
            when hi.cum_n > coalesce(lo.cum_n, 0)
                then (hi.cum_units - coalesce(lo.cum_units, 0)) / (hi.cum_n - coalesce(lo.cum_n, 0))
        end as prod_mean_qty_28d
    from feature_options as o
    asof left join customer_product_days as cp
        on cp.cidx = o.cidx and cp.pidx = o.pidx and o.day_before >= cp.day
    asof left join product_history_days as hi
        on hi.pidx = o.pidx and o.day_before >= hi.day
    asof left join product_history_days as lo
        on lo.pidx = o.pidx and o.day_before_window >= lo.day
    join feature_episodes as e on e.eidx = o.eidx
    left join brand_history as bh on bh.eidx = o.eidx and bh.bidx = o.bidx
)
select
    episode_id,
    product_id,
    pop_28d::bigint as pop_28d,
    pop_total::bigint as pop_total,
    pop_total = 0 as is_new,
    cust_product_purchases::bigint as cust_product_purchases,
    cust_brand_purchases::bigint as cust_brand_purchases,
    cust_category_purchases::bigint as cust_category_purchases,
    days_since::double as days_since_cust_purchase,
    case when list_price > 0 then 1 - price / list_price else 0 end as discount_depth,
    ln(price + 0.01) as log_price,
    case when mean_price > 0 then price / mean_price else 1 end as rel_price,
    ref_price,
    case when ref_price > 0 then (price - ref_price) / ref_price else 0 end as ref_price_gap,
    cust_mean_qty::double as cust_mean_qty,
    prod_mean_qty_28d::double as prod_mean_qty_28d
from joined
