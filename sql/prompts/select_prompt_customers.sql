-- One row per prompt episode: the customer's segment, demographics (customers.attributes), style
-- parameters, and their history with the episode's category before its day (episodes in the category and
-- mean units per purchase from option_features, which carry the same value on every option of an episode).
select
    p.episode_id,
    p.customer_id,
    coalesce(c.segment, sp.segment) as segment,
    c.attributes,
    sp.price_sensitivity,
    sp.discount_sensitivity,
    sp.loss_aversion,
    sp.brand_loyalty,
    sp.variety_seeking,
    sp.basket_size,
    h.n_category_episodes,
    h.mean_quantity
from prompt_episodes as p
left join customers as c on c.customer_id = p.customer_id
left join customer_style_params as sp on sp.customer_id = p.customer_id
left join (
    select
        f.episode_id,
        max(f.cust_category_purchases) as n_category_episodes,
        max(f.cust_mean_qty) as mean_quantity
    from option_features as f
    join prompt_episodes as q on q.episode_id = f.episode_id
    group by f.episode_id
) as h on h.episode_id = p.episode_id
order by p.episode_id
