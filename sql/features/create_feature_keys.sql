-- Temp table feature_keys: integer keys for the option_features joins (string keys on 10M rows are slow):
-- pidx per product, with its category (catidx) and brand (bidx, NULL when unknown).
create or replace temp table feature_keys as
select
    product_id,
    category,
    brand,
    cast(row_number() over (order by product_id) as integer) as pidx,
    cast(dense_rank() over (order by category) as integer) as catidx,
    case when brand is not null then cast(dense_rank() over (order by brand) as integer) end as bidx
from products
