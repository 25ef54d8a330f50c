-- Each customer's share of their merchandise retail purchases before $until (null: all days) per category,
-- for the $n_categories categories with the most purchases: the category mix the demographics imputer reads.
with bought as (
    select customer_id, category
    from episode_purchases
    where is_merchandise and customer_id is not null and unit_price > 0
        and day < coalesce($until::date, date '9999-12-31')
),
top as (
    select category from bought group by category order by count(*) desc, category limit $n_categories
)
select b.customer_id, b.category, count(*) / any_value(t.n) as share
from bought as b
join (select customer_id, count(*)::double as n from bought group by customer_id) as t using (customer_id)
where b.category in (select category from top)
group by b.customer_id, b.category
order by b.customer_id, b.category
