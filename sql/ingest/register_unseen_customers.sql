-- Customers of the loaded transaction lines that no customer file lists, registered with a NULL segment
-- (only when the mapping says its customer file is not exhaustive).
insert into customers
select distinct t.customer_id, null, null, $source, $file_sha256
from _typed as t
anti join _collisions as c on c._row = t._row
anti join customers as k on k.customer_id = t.customer_id
where t._reason is null
