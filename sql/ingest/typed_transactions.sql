-- The canonical transaction columns of one source file, typed, with the first failing check of each
-- row (_reason, _detail; NULL when the row is good). A template used as a subquery ({typed} in other statements): {source} is the staged file, and each
-- {column} the mapping's SQL for that canonical column (rendered by assets/ingest/mapping.py; id columns come
-- as text with blanks made NULL); values are $params. $ts_min/$ts_max and $quantity_min/$quantity_max are the
-- plausibility bounds (NULL: no bound).
with raw as (
    select
        _row,
        {txn_id} as txn_id,
        {basket_id} as basket_id,
        {ts} as r_ts,
        {customer_id} as customer_id,
        {product_id} as product_id,
        {quantity} as r_quantity,
        {unit_price} as r_unit_price,
        {list_price} as r_list_price,
        nullif(lower(trim(cast({channel} as varchar))), '') as channel
    from {source}
),
typed as (
    select
        *,
        {ts_parse} as ts,
        try_cast(r_quantity as double) as q,
        try_cast(r_unit_price as double) as up,
        try_cast(r_list_price as double) as lp
    from raw
),
checked as (
    select
        t.*,
        case
            when t.txn_id is null then {'r': 'missing_value', 'd': 'txn_id is empty'}
            when t.basket_id is null then {'r': 'missing_value', 'd': 'basket_id is empty'}
            when t.customer_id is null then {'r': 'missing_value', 'd': 'customer_id is empty'}
            when t.product_id is null then {'r': 'missing_value', 'd': 'product_id is empty'}
            when t.r_ts is null then {'r': 'missing_value', 'd': 'ts is empty'}
            when t.r_quantity is null then {'r': 'missing_value', 'd': 'quantity is empty'}
            when t.r_unit_price is null then {'r': 'missing_value', 'd': 'unit_price is empty'}
            when t.q is null or not isfinite(t.q)
                then {'r': 'bad_type', 'd': 'quantity ' || cast(t.r_quantity as varchar) || ' is not a number'}
            when t.q <> round(t.q)
                then {'r': 'non_integer_quantity', 'd': 'quantity ' || cast(t.r_quantity as varchar) || ' is not a whole number'}
            when t.q <= 0 then {'r': 'non_positive_quantity', 'd': 'quantity ' || cast(t.r_quantity as varchar)}
            when t.q < $quantity_min
                then {'r': 'quantity_out_of_range', 'd': 'quantity ' || cast(t.r_quantity as varchar) || ' is below ' || cast($quantity_min as varchar) || ' (ingest quantity_min)'}
            when t.q > $quantity_max
                then {'r': 'quantity_out_of_range', 'd': 'quantity ' || cast(t.r_quantity as varchar) || ' is above ' || cast($quantity_max as varchar) || ' (ingest quantity_max)'}
            when try_cast(t.q as bigint) is null
                then {'r': 'quantity_out_of_range', 'd': 'quantity ' || cast(t.r_quantity as varchar) || ' does not fit a 64-bit integer'}
            when t.ts is null then {'r': 'bad_timestamp', 'd': 'ts ' || cast(t.r_ts as varchar) || ' is not a timestamp'}
            when t.ts < $ts_min
                then {'r': 'implausible_timestamp', 'd': 'ts ' || cast(t.ts as varchar) || ' is before ' || cast($ts_min as varchar) || ' (ingest ts_min)'}
            when t.ts > $ts_max
                then {'r': 'implausible_timestamp', 'd': 'ts ' || cast(t.ts as varchar) || ' is after ' || cast($ts_max as varchar) || ' (ingest ts_max)'}
            when t.up is null or not isfinite(t.up)
                then {'r': 'non_numeric_price', 'd': 'unit_price ' || cast(t.r_unit_price as varchar) || ' is not a number'}
            when t.r_list_price is not null and (t.lp is null or not isfinite(t.lp))
                then {'r': 'non_numeric_price', 'd': 'list_price ' || cast(t.r_list_price as varchar) || ' is not a number'}
            when t.up < 0 then {'r': 'negative_price', 'd': 'unit_price ' || cast(t.up as varchar)}
            when t.lp < 0 then {'r': 'negative_price', 'd': 'list_price ' || cast(t.lp as varchar)}
            when t.channel is null then {'r': 'missing_value', 'd': 'channel is empty'}
            when t.channel not in ('retail', 'wholesale')
                then {'r': 'bad_channel', 'd': 'channel ' || t.channel || ' is not retail or wholesale'}
            when p.product_id is null then {'r': 'unknown_product', 'd': 'product_id ' || t.product_id || ' is not in products'}
            when $customers_exhaustive and c.customer_id is null
                then {'r': 'unknown_customer', 'd': 'customer_id ' || t.customer_id || ' is not in customers'}
        end as why
    from typed as t
    left join products as p on p.product_id = t.product_id
    -- customers are looked up only when the customer file is exhaustive (else the build side is empty)
    left join (select customer_id from customers where $customers_exhaustive) as c on c.customer_id = t.customer_id
)
select
    _row,
    txn_id,
    basket_id,
    ts,
    customer_id,
    product_id,
    try_cast(q as bigint) as quantity,
    up as unit_price,
    coalesce(lp, up) as list_price,
    channel,
    why.r as _reason,
    why.d as _detail
from checked
