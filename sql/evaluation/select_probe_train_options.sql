-- Every option of every train episode (cold categories' cut episodes included) with the model columns, the
-- episode's day and its use_for_fit flag: benchmarks/baselines_probe.py fits on slices of it (by day, with and
-- without the cold cut). Ordered so that each episode's options are contiguous.
select
    o.episode_id,
    o.position,
    o.is_chosen,
    e.day,
    s.use_for_fit,
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
    f.ref_price_gap
from episode_options as o
join decision_episodes as e on e.episode_id = o.episode_id
join episode_splits as s on s.episode_id = o.episode_id
left join option_features as f on f.episode_id = o.episode_id and f.product_id = o.product_id
where s.period = 'train'
order by o.episode_id, o.position
