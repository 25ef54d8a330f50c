-- whatif_diversion: the rows of ($scenario, $engine) replaced by the staged frame `staged_whatif_diversion`,
-- other scenarios' rows kept (the table exists: whatif_diversion.sql).
create or replace table whatif_diversion as
select * from whatif_diversion
where not (scenario = $scenario and engine = $engine)
union all by name
select
    cast(scenario as varchar) as scenario,
    cast(engine as varchar) as engine,
    cast(delisting as bigint) as delisting,
    cast(category as varchar) as category,
    cast(delisted as varchar) as delisted,
    cast(product_id as varchar) as product_id,
    cast(units_before as double) as units_before,
    cast(units_after as double) as units_after,
    cast(diversion as double) as diversion,
    cast(diversion_purchases as double) as diversion_purchases
from staged_whatif_diversion
