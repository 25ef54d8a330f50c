-- Builds episode_purchases: retail purchases after merging the lines of one product in one basket
-- (docs/evaluation-protocol.md "Purchase"). The basket's ts is its earliest retail line; its customer the smallest id
-- seen on it (one per basket in clean data). Lines with quantity <= 0 are not purchases.
create or replace table episode_purchases as
with baskets as (
    select basket_id, min(ts) as ts, min(customer_id) as customer_id
    from raw_transactions
    where channel = 'retail'
    group by basket_id
),
merged as (
    select
        t.basket_id,
        t.product_id,
        sum(t.quantity)::bigint as units,
        sum(t.unit_price * t.quantity) as spend,
        sum(coalesce(t.list_price, t.unit_price) * t.quantity) as list_spend
    from raw_transactions as t
    where t.channel = 'retail' and t.quantity > 0 and t.unit_price is not null
    group by t.basket_id, t.product_id
)
select
    m.basket_id,
    b.customer_id,
    m.product_id,
    p.category,
    cast(b.ts as date) as day,
    b.ts,
    m.units,
    m.spend,
    m.list_spend,
    m.spend / m.units as unit_price,
    m.list_spend / m.units as list_unit_price,
    coalesce(p.is_merchandise, true) and p.category is not null as is_merchandise
from merged as m
join baskets as b on b.basket_id = m.basket_id
left join products as p on p.product_id = m.product_id
order by b.ts, m.basket_id, m.product_id
