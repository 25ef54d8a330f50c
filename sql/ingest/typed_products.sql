-- The canonical product columns of one source file, typed, with the first failing check per row.
-- A template used as a subquery ({typed} in other statements): {source} is the staged file and each {column} the mapping's SQL for it; values are $params.
-- is_merchandise is false for the values the mapping's `exclude` lists ($exclude_<column> lists).
with raw as (
    select
        _row,
        {product_id} as product_id,
        nullif(trim(cast({category} as varchar)), '') as category,
        nullif(trim(cast({brand} as varchar)), '') as brand,
        nullif(trim(cast({department} as varchar)), '') as department,
        nullif(trim(cast({description} as varchar)), '') as description,
        {attributes} as attributes
    from {source}
)
select
    _row,
    product_id,
    category,
    brand,
    department,
    description,
    attributes,
    not coalesce(
        list_contains($exclude_category, category)
        or list_contains($exclude_brand, brand)
        or list_contains($exclude_department, department)
        or list_contains($exclude_description, description)
        or list_contains($exclude_product_id, product_id),
        false
    ) as is_merchandise,
    case
        when product_id is null then 'missing_value'
        when attributes is not null and coalesce(json_type(try(json(attributes))) <> 'OBJECT', true) then 'bad_type'
    end as _reason,
    case
        when product_id is null then 'product_id is empty'
        when attributes is not null and coalesce(json_type(try(json(attributes))) <> 'OBJECT', true)
            then 'attributes is not a JSON object: ' || left(attributes, 200)
    end as _detail
from raw
