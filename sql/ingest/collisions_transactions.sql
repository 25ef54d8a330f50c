-- _collisions: good rows (of the candidates in _cand) whose txn_id repeats in the file or is already in raw_transactions.
-- Each is compared with the warehouse row (if any), else with the file's first row of that txn_id:
-- identical -> 'duplicate' (counted, not loaded), different -> 'conflict' (quarantined as
-- conflicting_txn_id). The file's first row of a new txn_id is not listed (it loads).
create or replace temp table _collisions as
with valid as (
    select * from _cand where _reason is null
),
repeated as (
    select txn_id, min(_row) as first_row from valid group by txn_id having count(*) > 1
),
cand as materialized (
    select
        v.*,
        r.first_row,
        w.txn_id is not null as in_warehouse,
        w.basket_id is not distinct from v.basket_id
        and w.ts is not distinct from v.ts
        and w.customer_id is not distinct from v.customer_id
        and w.product_id is not distinct from v.product_id
        and w.quantity is not distinct from v.quantity
        and w.unit_price is not distinct from v.unit_price
        and w.list_price is not distinct from v.list_price
        and w.channel is not distinct from v.channel as same_as_warehouse
    from valid as v
    left join repeated as r on r.txn_id = v.txn_id
    left join raw_transactions as w on w.txn_id = v.txn_id
    where r.txn_id is not null or w.txn_id is not null
)
select
    c._row,
    case
        when c.in_warehouse and c.same_as_warehouse then 'duplicate'
        when c.in_warehouse then 'conflict'
        when f.basket_id is not distinct from c.basket_id
            and f.ts is not distinct from c.ts
            and f.customer_id is not distinct from c.customer_id
            and f.product_id is not distinct from c.product_id
            and f.quantity is not distinct from c.quantity
            and f.unit_price is not distinct from c.unit_price
            and f.list_price is not distinct from c.list_price
            and f.channel is not distinct from c.channel then 'duplicate'
        else 'conflict'
    end as _outcome,
    case
        when c.in_warehouse and c.same_as_warehouse then 'txn_id ' || c.txn_id || ' already loaded with the same content'
        when c.in_warehouse then 'txn_id ' || c.txn_id || ' already loaded with different content'
        else 'txn_id ' || c.txn_id || ' first seen at row ' || cast(c.first_row as varchar) || ' of this file'
    end as _detail
from cand as c
left join cand as f on f.txn_id = c.txn_id and f._row = c.first_row
where c.in_warehouse or c._row <> c.first_row
