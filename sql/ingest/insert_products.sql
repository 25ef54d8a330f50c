-- Append the good, new rows to products.
insert into products
select
    t.product_id, t.category, t.brand, t.department, t.description, t.attributes, t.is_merchandise,
    $file_id
from _typed as t
anti join _collisions as c on c._row = t._row
where t._reason is null
