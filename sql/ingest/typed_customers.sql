-- The canonical customer columns of one source file, typed, with the first failing check per row.
-- A template used as a subquery ({typed} in other statements): {source} is the staged file and each {column} the mapping's SQL for it; values are $params.
with raw as (
    select
        _row,
        {customer_id} as customer_id,
        nullif(trim(cast({segment} as varchar)), '') as segment,
        {attributes} as attributes
    from {source}
)
select
    _row,
    customer_id,
    segment,
    attributes,
    case
        when customer_id is null then 'missing_value'
        when attributes is not null and coalesce(json_type(try(json(attributes))) <> 'OBJECT', true) then 'bad_type'
    end as _reason,
    case
        when customer_id is null then 'customer_id is empty'
        when attributes is not null and coalesce(json_type(try(json(attributes))) <> 'OBJECT', true)
            then 'attributes is not a JSON object: ' || left(attributes, 200)
    end as _detail
from raw
