-- Every option of the prompt episodes with its product facts and option features (left joins: an option
-- without a product or feature row is kept, its fields NULL), each episode's options in position order.
select
    o.episode_id,
    o.product_id,
    o.position,
    o.is_chosen,
    o.price,
    o.list_price,
    pr.description,
    pr.brand,
    pr.attributes,
    f.discount_depth,
    f.ref_price,
    f.ref_price_gap,
    f.cust_brand_purchases,
    f.cust_product_purchases,
    f.pop_28d,
    f.is_new
from prompt_episodes as p
join episode_options as o on o.episode_id = p.episode_id
left join products as pr on pr.product_id = o.product_id
left join option_features as f on f.episode_id = o.episode_id and f.product_id = o.product_id
order by o.episode_id, o.position
