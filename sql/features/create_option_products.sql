-- Temp table option_products: an integer key pidx for every merchandise product with a category that was
-- purchased, numbered in product_id text order (so sorting pidx sorts product_id as text).
create or replace temp table option_products as
select product_id, cast(row_number() over (order by product_id) as integer) as pidx
from (select distinct product_id from episode_purchases where is_merchandise)
