-- _collisions: good rows (of the candidates in _cand) whose customer_id repeats in the file or is already in customers.
-- A warehouse row that was only registered from transactions (a placeholder, its file is a transactions file
-- in the ledger) is replaced by the customer file's row: 'replace'. Otherwise identical -> 'duplicate',
-- different -> 'conflict' (quarantined as conflicting_customer_id); the file's first row of a new id is not listed.
create or replace temp table _collisions as
with valid as (
    select * from _cand where _reason is null
),
repeated as (
    select customer_id, min(_row) as first_row from valid group by customer_id having count(*) > 1
),
existing as (
    select
        w.*,
        w.file_id in (select file_id from ingest_ledger where table_name = 'transactions') as is_placeholder
    from customers as w
    where w.customer_id in (select customer_id from valid)
),
cand as materialized (
    select
        v.*,
        r.first_row,
        w.customer_id is not null as in_warehouse,
        coalesce(w.is_placeholder, false) as replaces_placeholder,
        w.segment is not distinct from v.segment
        and w.attributes is not distinct from v.attributes as same_as_warehouse
    from valid as v
    left join repeated as r on r.customer_id = v.customer_id
    left join existing as w on w.customer_id = v.customer_id
    where r.customer_id is not null or w.customer_id is not null
)
select
    c._row,
    case
        when c.replaces_placeholder and (c.first_row is null or c._row = c.first_row) then 'replace'
        when c.in_warehouse and not c.replaces_placeholder and c.same_as_warehouse then 'duplicate'
        when c.in_warehouse and not c.replaces_placeholder then 'conflict'
        when f.segment is not distinct from c.segment and f.attributes is not distinct from c.attributes then 'duplicate'
        else 'conflict'
    end as _outcome,
    case
        when c.replaces_placeholder and (c.first_row is null or c._row = c.first_row)
            then 'customer_id ' || c.customer_id || ' replaces the row registered from transactions'
        when c.in_warehouse and not c.replaces_placeholder and c.same_as_warehouse
            then 'customer_id ' || c.customer_id || ' already loaded with the same content'
        when c.in_warehouse and not c.replaces_placeholder
            then 'customer_id ' || c.customer_id || ' already loaded with different content'
        else 'customer_id ' || c.customer_id || ' first seen at row ' || cast(c.first_row as varchar) || ' of this file'
    end as _detail
from cand as c
left join cand as f on f.customer_id = c.customer_id and f._row = c.first_row
where c.in_warehouse or c._row <> c.first_row
