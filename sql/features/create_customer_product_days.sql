-- Temp table customer_product_days: per (customer, product, day) of retail purchases, the running count
-- and sum of paid unit prices up to and including that day
-- (prices summed as DECIMAL(38, 10) so window differences are exact).
create or replace temp table customer_product_days as
with daily as (
    select cidx, pidx, day, count(*) as n, sum(cast(unit_price as decimal(38, 10))) as sum_price
    from keyed_purchases
    group by cidx, pidx, day
)
select
    cidx,
    pidx,
    day,
    sum(n) over w as cum_n,
    sum(sum_price) over w as cum_price
from daily
window w as (partition by cidx, pidx order by day rows between unbounded preceding and current row)
