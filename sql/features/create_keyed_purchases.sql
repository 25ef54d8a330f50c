-- Temp table keyed_purchases: episode_purchases with integer product/category/brand/customer keys.
-- Customers get cidx by dense rank of customer_id; products missing from `products` get no pidx.
create or replace temp table keyed_purchases as
select
    k.pidx,
    k.catidx,
    k.bidx,
    cast(dense_rank() over (order by p.customer_id) as integer) as cidx,
    p.customer_id,
    p.basket_id,
    p.day,
    p.units,
    p.unit_price,
    p.is_merchandise
from episode_purchases as p
join feature_keys as k on k.product_id = p.product_id
