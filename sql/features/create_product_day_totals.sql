-- Temp table product_day_totals: per product and day, its retail purchases (count, units, sums of unit and
-- list unit prices) and their running totals up to and including that day, so that any window [a, b] is
-- cum(<= b) - cum(<= a - 1) through ASOF joins. Prices are summed as DECIMAL(38, 10), so that window
-- differences are exact (no negative float residue where the true mean is 0).
create or replace temp table product_day_totals as
with daily as (
    select
        product_id,
        day,
        count(*) as n,
        sum(units) as units,
        sum(cast(unit_price as decimal(38, 10))) as sum_price,
        sum(cast(list_unit_price as decimal(38, 10))) as sum_list_price
    from episode_purchases
    group by product_id, day
)
select
    product_id,
    day,
    n,
    units,
    sum_price,
    sum_list_price,
    sum(n) over w as cum_n,
    sum(units) over w as cum_units,
    sum(sum_price) over w as cum_price,
    sum(sum_list_price) over w as cum_list_price
from daily
window w as (partition by product_id order by day rows between unbounded preceding and current row)
