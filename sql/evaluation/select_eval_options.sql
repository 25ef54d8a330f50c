-- The scored part of the baselines' option frame: every option of the val and test episodes with its
-- features, its episode's facts, split flags and the seeded sample key of docs/evaluation-protocol.md
-- (md5("{seed}|{basket_id}|{category}")), ordered so that each episode's options are contiguous.
-- option_features is left-joined so that an option without a feature row is kept (its features read as 0).
-- The val analogues of the test splits (best_classic chooses on them, assets/evaluation/best_classic.py):
-- in_val_sparse: a val episode of a category whose test episodes are test_sparse (fewer than 100 training
-- episodes); cold_category: its category is a cold one (val_cold); in_val_new: its actual product had no
-- purchase before the first val day, test_new's "no sale in train" read for val.
with val_start as (
    select min(e.day) as day
    from decision_episodes as e
    join episode_splits as s on s.episode_id = e.episode_id
    where s.period = 'val'
),
sold_before_val as (
    select distinct p.product_id from episode_purchases as p, val_start as v where p.day < v.day
),
sparse_categories as (
    select distinct e.category
    from decision_episodes as e
    join episode_splits as s on s.episode_id = e.episode_id
    where s.in_test_sparse
)
select
    o.episode_id,
    o.product_id,
    o.position,
    o.is_chosen,
    e.category,
    e.quantity,
    s.period,
    s.in_test_sparse,
    s.in_test_cold,
    s.in_test_new,
    s.cold_category,
    s.period = 'val' and e.category in (select category from sparse_categories) as in_val_sparse,
    s.period = 'val' and e.chosen_product_id not in (select product_id from sold_before_val) as in_val_new,
    md5(cast($seed as varchar) || '|' || e.basket_id || '|' || e.category) as sample_key,
    f.pop_28d,
    f.pop_total,
    f.is_new,
    f.cust_product_purchases,
    f.cust_brand_purchases,
    f.cust_category_purchases,
    f.days_since_cust_purchase,
    f.discount_depth,
    f.log_price,
    f.rel_price,
    f.ref_price_gap,
    f.cust_mean_qty,
    f.prod_mean_qty_28d
from episode_options as o
join decision_episodes as e on e.episode_id = o.episode_id
join episode_splits as s on s.episode_id = o.episode_id
left join option_features as f on f.episode_id = o.episode_id and f.product_id = o.product_id
where s.period in ('val', 'test')
order by o.episode_id, o.position
