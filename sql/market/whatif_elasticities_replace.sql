-- whatif_elasticities: the rows of ($scenario, $engine) replaced by the staged frame
-- `staged_whatif_elasticities`, other scenarios' rows kept (the table exists: whatif_elasticities.sql).
create or replace table whatif_elasticities as
select * from whatif_elasticities
where not (scenario = $scenario and engine = $engine)
union all by name
select
    cast(scenario as varchar) as scenario,
    cast(engine as varchar) as engine,
    cast(category as varchar) as category,
    cast(product_id as varchar) as product_id,
    cast(price_product_id as varchar) as price_product_id,
    cast(elasticity as double) as elasticity,
    cast(units_base as double) as units_base,
    cast(units_minus as double) as units_minus,
    cast(units_plus as double) as units_plus
from staged_whatif_elasticities
