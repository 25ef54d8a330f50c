-- _collisions: good rows (of the candidates in _cand) whose product_id repeats in the file or is already in products.
-- A product listed in the file under several categories keeps its most frequent one (docs/evaluation-protocol.md;
-- ties: the category seen first): its first row in that category is the file's row of the product, and its rows
-- under the other categories are set aside as 'other_category' (quarantined, counted). Every other row is
-- compared with the warehouse row (if any), else with the file's row: identical -> 'duplicate', different ->
-- 'conflict' (quarantined as conflicting_product_id). The file's row of a new product_id is not listed.
create or replace temp table _collisions as
with valid as (
    select * from _cand where _reason is null
),
by_category as (
    select product_id, category, count(*) as n, min(_row) as first_row
    from valid
    group by all
),
repeated as (
    select
        product_id,
        arg_max(category, (n, -first_row)) as top_category,
        arg_max(first_row, (n, -first_row)) as first_row,
        max(n) as top_n,
        count(*) as n_categories
    from by_category
    group by product_id
    having sum(n) > 1
),
cand as materialized (
    select
        v.*,
        r.first_row,
        r.top_category,
        r.top_n,
        coalesce(r.n_categories > 1 and v.category is distinct from r.top_category, false) as other_category,
        w.product_id is not null as in_warehouse,
        w.category is not distinct from v.category
        and w.brand is not distinct from v.brand
        and w.department is not distinct from v.department
        and w.description is not distinct from v.description
        and w.attributes is not distinct from v.attributes
        and w.is_merchandise is not distinct from v.is_merchandise as same_as_warehouse
    from valid as v
    left join repeated as r on r.product_id = v.product_id
    left join products as w on w.product_id = v.product_id
    where r.product_id is not null or w.product_id is not null
)
select
    c._row,
    case
        when c.in_warehouse and c.same_as_warehouse then 'duplicate'
        when c.in_warehouse then 'conflict'
        when c.other_category then 'other_category'
        when f.category is not distinct from c.category
            and f.brand is not distinct from c.brand
            and f.department is not distinct from c.department
            and f.description is not distinct from c.description
            and f.attributes is not distinct from c.attributes
            and f.is_merchandise is not distinct from c.is_merchandise then 'duplicate'
        else 'conflict'
    end as _outcome,
    case
        when c.in_warehouse and c.same_as_warehouse then 'product_id ' || c.product_id || ' already loaded with the same content'
        when c.in_warehouse then 'product_id ' || c.product_id || ' already loaded with different content'
        when c.other_category
            then 'product_id ' || c.product_id || ' keeps its most frequent category '
                || coalesce(c.top_category, 'NULL') || ' (' || cast(c.top_n as varchar) || ' rows), not '
                || coalesce(c.category, 'NULL')
        else 'product_id ' || c.product_id || ' first seen at row ' || cast(c.first_row as varchar) || ' of this file'
    end as _detail
from cand as c
left join cand as f on f.product_id = c.product_id and f._row = c.first_row
where c.in_warehouse or c._row <> c.first_row
