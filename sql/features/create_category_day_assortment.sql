-- Temp table category_day_assortment: for every (category, day) that has an episode, the products of the
-- category with at least one merchandise purchase in days [day - $window_days, day + $window_days].
-- Built from each product's runs of purchase days (runs whose windows touch are merged) expanded to days.
create or replace temp table category_day_assortment as
with product_days as (
    select distinct category, product_id, day
    from episode_purchases
    where is_merchandise
),
flagged as (
    select
        category,
        product_id,
        day,
        case
            when day - lag(day) over (partition by category, product_id order by day) > 2 * $window_days + 1
                then 1
            else 0
        end as starts_run
    from product_days
),
runs as (
    select
        category,
        product_id,
        day,
        sum(starts_run) over (partition by category, product_id order by day) as run_id
    from flagged
),
spans as (
    select
        category,
        product_id,
        min(day) - $window_days::integer as first_day,
        max(day) + $window_days::integer as last_day
    from runs
    group by category, product_id, run_id
),
covered as (
    select category, product_id, cast(unnest(generate_series(first_day, last_day, interval 1 day)) as date) as day
    from spans
)
select c.category, c.day, c.product_id, k.pidx
from covered as c
join option_products as k on k.product_id = c.product_id
semi join (select distinct category, day from episode_heads) as e
    on e.category = c.category and e.day = c.day
