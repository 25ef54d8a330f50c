-- One row per customer with merchandise retail purchases before $until (null: all days): the behaviour the
-- demographics imputer reads (assets/market/augment.py). trips_per_week over the weeks from the first day of
-- the data to $until; price_level = mean log(unit price / the category's mean unit price over the same days)
-- (0: the category's average, > 0: dearer); discount_share = share of purchases below their list price.
with bought as (
    select customer_id, basket_id, category, day, units, spend, unit_price, list_unit_price
    from episode_purchases
    where is_merchandise and customer_id is not null and unit_price > 0
        and day < coalesce($until::date, date '9999-12-31')
),
category_price as (
    select category, sum(spend) / sum(units) as mean_price from bought group by category
),
span as (
    select greatest(
        (coalesce($until::date, max(day) + 1) - min(day)) / 7.0, 1.0
    ) as weeks from bought
)
select
    b.customer_id,
    count(distinct b.basket_id) / any_value(s.weeks) as trips_per_week,
    sum(b.spend) / count(distinct b.basket_id) as spend_per_trip,
    sum(b.units) / count(distinct b.basket_id) as units_per_trip,
    count(*) / count(distinct b.basket_id) as lines_per_trip,
    avg(ln(b.unit_price / c.mean_price)) as price_level,
    avg(case when b.list_unit_price > b.unit_price + 0.005 then 1.0 else 0.0 end) as discount_share,
    count(distinct b.category) as n_categories
from bought as b
join category_price as c using (category)
cross join span as s
group by b.customer_id
order by b.customer_id
