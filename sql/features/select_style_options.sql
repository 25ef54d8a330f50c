-- Option rows of the episodes a method may fit on (episode_splits.use_for_fit: train period, cold
-- categories limited to their earliest episodes) with the features customer_style_params needs, sorted by
-- episode.
with fit as (
    select e.episode_id, e.customer_id, row_number() over (order by e.episode_id) as eidx
    from decision_episodes as e
    join episode_splits as s on s.episode_id = e.episode_id
    where s.use_for_fit
)
select
    f.eidx,
    f.customer_id,
    o.is_chosen,
    o.price,
    x.ref_price,
    x.discount_depth,
    x.pop_28d,
    x.pop_total,
    x.is_new,
    x.cust_product_purchases,
    x.cust_brand_purchases
from fit as f
join episode_options as o on o.episode_id = f.episode_id
join option_features as x on x.episode_id = o.episode_id and x.product_id = o.product_id
order by f.eidx
