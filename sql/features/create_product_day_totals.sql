-- Temp table product_day_totals: per product (pidx) and day, its retail purchases (count, sums of unit and
-- list unit prices) and their running totals up to and including that day, so that any window [a, b] is
-- cum(<= b) - cum(<= a - 1) through ASOF joins. Prices are summed as DECIMAL(38, 10), so that window
-- differences are exact (no negative float residue where the true mean is 0).
create or replace temp table product_day_totals as
with daily as (
    select
        k.pidx,
        p.day,
        count(*) as n,
        sum(cast(p.unit_price as decimal(38, 10))) as sum_price,
        sum(cast(p.list_unit_price as decimal(38, 10))) as sum_list_price
    from episode_purchases as p
    join option_products as k on k.product_id = p.product_id
    group by k.pidx, p.day
)
select
    pidx,
    day,
    sum(n) over w as cum_n,
    sum(sum_price) over w as cum_price,
    sum(sum_list_price) over w as cum_list_price
from daily
window w as (partition by pidx order by day rows between unbounded preceding and current row)
