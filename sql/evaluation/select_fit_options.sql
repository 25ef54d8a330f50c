-- The fit part of the baselines' option frame: every option of the train episodes with use_for_fit = true,
-- with only the columns the models read, ordered so that each episode's options are contiguous.
-- option_features is left-joined so that an option without a feature row is kept (its features read as 0).
select
    o.episode_id,
    o.position,
    o.is_chosen,
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
join episode_splits as s on s.episode_id = o.episode_id
left join option_features as f on f.episode_id = o.episode_id and f.product_id = o.product_id
where s.period = 'train' and s.use_for_fit
order by o.episode_id, o.position
