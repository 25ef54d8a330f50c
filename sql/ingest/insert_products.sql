-- Append the good, new rows to products. A template: {typed} is the typed_products query.
insert into products
select
    t.product_id, t.category, t.brand, t.department, t.description, t.attributes, t.is_merchandise,
    $source, $file_sha256
from ({typed}) as t
anti join _collisions as c on c._row = t._row
where t._reason is null
