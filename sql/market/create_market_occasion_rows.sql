-- Temp table market_occasion_rows: the occasions of the market simulation (docs/evaluation-protocol.md
-- "Market-level evaluation"): the decision episodes of period $period (episode_splits), each with its ISO week
-- ('YYYY-Www', '%G-W%V') and week_index (calendar ISO weeks counted from the week of the period's first
-- occasion, 1 = that week: partial when the period does not start on a Monday; weeks without occasions count).
-- Filters, applied in this order, NULL = no filter: $weeks keeps weeks 1..$weeks; $categories (a list) keeps
-- those categories; $top_categories keeps the N categories with the most actual units in the occasions left
-- (ties: category as text); $customers (a list) keeps those customers; $n_customers keeps the N customers with
-- the smallest md5('{seed}|{customer_id}') among those left.
create or replace temp table market_occasion_rows as
with period as (
    select
        e.episode_id,
        e.basket_id,
        e.customer_id,
        e.category,
        e.ts,
        e.day,
        e.chosen_product_id,
        e.quantity,
        s.period,
        strftime(e.day, '%G-W%V') as iso_week
    from decision_episodes as e
    join episode_splits as s on s.episode_id = e.episode_id
    where s.period = $period
),
weeks as (
    select p.*, datediff('day', f.first_monday, date_trunc('week', p.day)) // 7 + 1 as week_index
    from period as p
    cross join (select min(date_trunc('week', day)) as first_monday from period) as f
),
in_weeks as (
    select * from weeks where $weeks::integer is null or week_index <= $weeks::integer
),
in_categories as (
    select *
    from in_weeks
    where $categories::varchar[] is null or list_contains($categories::varchar[], category)
),
category_ranks as (
    select category, row_number() over (order by sum(quantity) desc, category) as category_rank
    from in_categories
    group by category
),
in_top as (
    select i.*
    from in_categories as i
    join category_ranks as r on r.category = i.category
    where $top_categories::integer is null or r.category_rank <= $top_categories::integer
),
in_customers as (
    select *
    from in_top
    where $customers::varchar[] is null or list_contains($customers::varchar[], customer_id)
),
customer_draw as (
    select
        customer_id,
        row_number() over (order by md5(cast($seed as bigint)::varchar || '|' || customer_id)) as draw_rank
    from (select distinct customer_id from in_customers)
)
select
    i.episode_id as occasion_id,
    i.basket_id,
    i.customer_id,
    i.category,
    i.ts,
    i.day,
    i.period,
    i.iso_week,
    cast(i.week_index as integer) as week_index,
    i.chosen_product_id as actual_product_id,
    i.quantity as actual_quantity
from in_customers as i
join customer_draw as c on c.customer_id = i.customer_id
where $n_customers::integer is null or c.draw_rank <= $n_customers::integer
