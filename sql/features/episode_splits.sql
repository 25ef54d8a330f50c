-- Builds episode_splits (docs/evaluation-protocol.md "Splits"): with end = the last day of the retail data + 1, test is
-- days [end - $test_days, end), validation [end - $test_days - $val_days, end - $test_days), train before.
-- Cold categories: of the categories with >= $min_train_episodes training episodes, the
-- floor($cold_share * count + 0.5) with the smallest md5('{seed}|{category}'); each keeps its
-- $cold_fit_episodes earliest training episodes (basket ts, then basket_id) for fitting.
-- "No sale in train" for test_new = no retail purchase of the product on a train day.
create or replace table episode_splits as
with bounds as (
    select max(day) + 1 as end_day from episode_purchases
),
periods as (
    select
        e.episode_id,
        e.category,
        e.chosen_product_id,
        e.ts,
        e.basket_id,
        case
            when e.day >= b.end_day - $test_days::integer then 'test'
            when e.day >= b.end_day - ($test_days::integer + $val_days::integer) then 'val'
            else 'train'
        end as period
    from decision_episodes as e
    cross join bounds as b
),
train_counts as (
    select category, count(*) as n_train from periods where period = 'train' group by category
),
eligible as (
    select
        category,
        row_number() over (order by md5(cast($seed as bigint)::varchar || '|' || category)) as draw_rank,
        count(*) over () as n_eligible
    from train_counts
    where n_train >= $min_train_episodes
),
cold as (
    select category from eligible where draw_rank <= floor($cold_share * n_eligible + 0.5)
),
train_products as (
    select distinct p.product_id
    from episode_purchases as p
    cross join bounds as b
    where p.day < b.end_day - ($test_days::integer + $val_days::integer)
),
flagged as (
    select
        p.*,
        c.category is not null as cold_category,
        coalesce(t.n_train, 0) < $min_train_episodes as sparse_category,
        tp.product_id is null as product_new,
        row_number() over (partition by p.category, p.period order by p.ts, p.basket_id) as time_rank
    from periods as p
    left join cold as c on c.category = p.category
    left join train_counts as t on t.category = p.category
    left join train_products as tp on tp.product_id = p.chosen_product_id
)
select
    episode_id,
    period,
    period = 'test' and sparse_category as in_test_sparse,
    period = 'test' and cold_category as in_test_cold,
    period = 'test' and product_new as in_test_new,
    cold_category,
    period = 'train' and (not cold_category or time_rank <= $cold_fit_episodes) as use_for_fit
from flagged
