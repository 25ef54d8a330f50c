-- Temp table customer_category_days: per (customer, category, day), running totals of the customer's
-- episodes in the category (baskets with a merchandise purchase of it, size-1 choice sets included),
-- purchases and units (for cust_category_purchases and cust_mean_qty).
create or replace temp table customer_category_days as
with daily as (
    select
        cidx,
        catidx,
        day,
        count(distinct basket_id) as baskets,
        count(*) as n,
        sum(units) as units
    from keyed_purchases
    where is_merchandise
    group by cidx, catidx, day
)
select
    cidx,
    catidx,
    day,
    sum(baskets) over w as cum_baskets,
    sum(n) over w as cum_n,
    sum(units) over w as cum_units
from daily
window w as (partition by cidx, catidx order by day rows between unbounded preceding and current row)
