-- Temp table market_option_sets: the consideration set of every occasion (docs/evaluation-protocol.md
-- "Market-level evaluation"), never conditioned on the actual choice: it reads only the occasion's customer,
-- category and day d, and history strictly before d.
-- 1. 'own': the customer's products of the category bought before d (merchandise purchases = (basket,
--    product) pairs on days < d), at most $own_max, by number of purchases desc, then the latest purchase day
--    desc, then product_id (text);
-- 2. 'best_seller': the category's products by purchases in days d - $history_days .. d - 1 (ties: product_id),
--    skipping own products, until the set holds $m_options;
-- 3. 'scenario': the staged market_scenario_products of the category not already in the set (product_id order).
-- set_rank numbers the options 1.. in that order.
create or replace temp table market_option_sets as
with occ as (
    select occasion_id, customer_id, category, day from market_occasion_rows
),
own_days as (
    select p.customer_id, p.category, p.product_id, p.day, count(*) as n
    from episode_purchases as p
    semi join (select distinct customer_id, category from occ) as c
        on c.customer_id = p.customer_id and c.category = p.category
    where p.is_merchandise
    group by p.customer_id, p.category, p.product_id, p.day
),
own_counts as (
    select o.occasion_id, h.product_id, sum(h.n) as n_purchases, max(h.day) as last_day
    from occ as o
    join own_days as h on h.customer_id = o.customer_id and h.category = o.category and h.day < o.day
    group by o.occasion_id, h.product_id
),
own as (
    select
        occasion_id,
        product_id,
        row_number() over (
            partition by occasion_id order by n_purchases desc, last_day desc, product_id asc
        ) as set_rank
    from own_counts
    qualify set_rank <= $own_max
),
n_own as (
    select occasion_id, count(*) as n from own group by occasion_id
),
sales_days as (
    select p.category, p.product_id, p.day, count(*) as n
    from episode_purchases as p
    semi join (select distinct category from occ) as c on c.category = p.category
    where p.is_merchandise
    group by p.category, p.product_id, p.day
),
best_counts as (
    select c.category, c.day, s.product_id, sum(s.n) as n_recent
    from (select distinct category, day from occ) as c
    join sales_days as s
        on s.category = c.category and s.day between c.day - $history_days::integer and c.day - 1
    group by c.category, c.day, s.product_id
),
best as (
    -- the top $m_options suffice: at most $own_max <= $m_options of them are own products
    select
        category,
        day,
        product_id,
        row_number() over (partition by category, day order by n_recent desc, product_id asc) as best_rank
    from best_counts
    qualify best_rank <= $m_options
),
fill as (
    select
        o.occasion_id,
        b.product_id,
        row_number() over (partition by o.occasion_id order by b.best_rank) as fill_rank
    from occ as o
    join best as b on b.category = o.category and b.day = o.day
    anti join own as w on w.occasion_id = o.occasion_id and w.product_id = b.product_id
),
core as (
    select occasion_id, product_id, set_rank, 'own' as source
    from own
    union all
    select f.occasion_id, f.product_id, coalesce(n.n, 0) + f.fill_rank as set_rank, 'best_seller' as source
    from fill as f
    left join n_own as n on n.occasion_id = f.occasion_id
    where coalesce(n.n, 0) + f.fill_rank <= $m_options
),
n_core as (
    select occasion_id, count(*) as n from core group by occasion_id
),
scenario as (
    select o.occasion_id, s.product_id
    from occ as o
    join (select distinct category, product_id from market_scenario_products) as s on s.category = o.category
    anti join core as c on c.occasion_id = o.occasion_id and c.product_id = s.product_id
)
select occasion_id, product_id, cast(set_rank as integer) as set_rank, source
from core
union all
select
    s.occasion_id,
    s.product_id,
    cast(coalesce(n.n, 0) + row_number() over (partition by s.occasion_id order by s.product_id) as integer)
        as set_rank,
    'scenario' as source
from scenario as s
left join n_core as n on n.occasion_id = s.occasion_id
