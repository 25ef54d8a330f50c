-- Append the good, new rows (no failing check, not a duplicate or conflict) to raw_transactions.
insert into raw_transactions
select
    t.txn_id, t.basket_id, t.ts, t.customer_id, t.product_id, t.quantity, t.unit_price, t.list_price, t.channel,
    $file_id
from _typed as t
anti join _collisions as c on c._row = t._row
where t._reason is null
