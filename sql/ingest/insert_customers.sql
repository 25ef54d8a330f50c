-- Append the good, new rows to customers (rows replacing a placeholder included).
insert into customers
select t.customer_id, t.segment, t.attributes, $file_id
from _typed as t
left join _collisions as c on c._row = t._row
where t._reason is null and (c._row is null or c._outcome = 'replace')
