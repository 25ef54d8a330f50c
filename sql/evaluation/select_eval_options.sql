-- The scored part of the baselines' option frame: every option of the val and test episodes with its
-- features, its episode's facts, split flags and the seeded sample key of docs/evaluation-protocol.md
-- (md5("{seed}|{basket_id}|{category}")), ordered so that each episode's options are contiguous.
-- option_features is left-joined so that an option without a feature row is kept (its features read as 0).
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
