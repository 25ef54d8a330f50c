-- Builds decision_episodes: one row per (basket, category) episode whose choice set has at least 2 options.
create or replace table decision_episodes as
select
    e.episode_id,
    e.basket_id,
    e.category,
    e.customer_id,
    e.ts,
    e.day,
    e.chosen_product_id,
    e.quantity,
    cast(1 + len(n.negatives) as integer) as n_options
from episode_heads as e
join episode_negatives as n on n.eidx = e.eidx
where len(n.negatives) >= 1
order by e.ts, e.basket_id, e.category
