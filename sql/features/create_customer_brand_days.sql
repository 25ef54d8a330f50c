-- Temp table customer_brand_days: per (customer, category, brand, day), the running count of the
-- customer's merchandise purchases in that category of products of that brand (NULL brands never match).
create or replace temp table customer_brand_days as
with daily as (
    select cidx, catidx, bidx, day, count(*) as n
    from keyed_purchases
    where is_merchandise and bidx is not null
    group by cidx, catidx, bidx, day
)
select
    cidx,
    catidx,
    bidx,
    day,
    sum(n) over (partition by cidx, catidx, bidx order by day rows between unbounded preceding and current row)
        as cum_n
from daily
