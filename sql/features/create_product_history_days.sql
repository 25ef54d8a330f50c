-- Temp table product_history_days: per product (pidx) and day, running totals of its retail purchases,
-- units and paid unit prices up to and including that day
-- (prices summed as DECIMAL(38, 10) so window differences are exact).
create or replace temp table product_history_days as
with daily as (
    select pidx, day, count(*) as n, sum(units) as units, sum(cast(unit_price as decimal(38, 10))) as sum_price
    from keyed_purchases
    group by pidx, day
)
select
    pidx,
    day,
    sum(n) over w as cum_n,
    sum(units) over w as cum_units,
    sum(sum_price) over w as cum_price
from daily
window w as (partition by pidx order by day rows between unbounded preceding and current row)
