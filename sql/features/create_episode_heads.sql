-- Temp table episode_heads: one row per (basket, category) of merchandise purchases with its actual
-- choice: most units, ties more spend (compared at 1e-6 so float noise of summed lines is no tie-breaker),
-- then the smaller product_id as text. eidx is an integer key; hash_prefix is '{seed}|{basket_id}|{category}|'
-- for the negative draw.
create or replace temp table episode_heads as
with heads as (
    select
        basket_id,
        category,
        customer_id,
        ts,
        day,
        product_id as chosen_product_id,
        units as quantity
    from episode_purchases
    where is_merchandise
    qualify row_number() over (
        partition by basket_id, category
        order by units desc, round(spend, 6) desc, product_id asc
    ) = 1
)
select
    cast(row_number() over () as integer) as eidx,
    h.basket_id || '|' || h.category as episode_id,
    h.*,
    k.pidx as chosen_pidx,
    cast($seed as bigint)::varchar || '|' || h.basket_id || '|' || h.category || '|' as hash_prefix
from heads as h
join option_products as k on k.product_id = h.chosen_product_id
