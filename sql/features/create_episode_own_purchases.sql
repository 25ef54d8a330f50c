-- Temp table episode_own_purchases: each episode's own basket purchases in its category (eidx, pidx),
-- to leave them out of the option price windows.
create or replace temp table episode_own_purchases as
select e.eidx, k.pidx, p.unit_price, p.list_unit_price
from episode_purchases as p
join episode_heads as e on e.basket_id = p.basket_id and e.category = p.category
join option_products as k on k.product_id = p.product_id
where p.is_merchandise
