-- Customers of the transaction lines just loaded from this file that no customer file lists, registered with
-- a NULL segment (only when the mapping says its customer file is not exhaustive).
insert into customers
select distinct t.customer_id, null, null, $file_id
from raw_transactions as t
anti join customers as k on k.customer_id = t.customer_id
where t.file_id = $file_id
