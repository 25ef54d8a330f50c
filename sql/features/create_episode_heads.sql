-- Temp table episode_heads: one row per (basket, category) of merchandise purchases with its actual
-- choice: most units, ties more spend (compared at 1e-6 so float noise of summed lines is no tie-breaker),
-- then the smaller product_id as text. hash_prefix is '{seed}|{basket_id}|{category}|' for the draw.
create or replace temp table episode_heads as
select
    basket_id || '|' || category as episode_id,
    basket_id,
    category,
    customer_id,
    ts,
    day,
    product_id as chosen_product_id,
    units as quantity,
    cast($seed as bigint)::varchar || '|' || basket_id || '|' || category || '|' as hash_prefix
from episode_purchases
where is_merchandise
qualify row_number() over (
    partition by basket_id, category
    order by units desc, round(spend, 6) desc, product_id asc
) = 1
