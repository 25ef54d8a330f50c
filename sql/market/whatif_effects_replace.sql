-- whatif_effects: the rows of ($scenario, $engine) replaced by the staged frame `staged_whatif_effects`, other
-- scenarios' rows kept (the table exists: whatif_effects.sql).
create or replace table whatif_effects as
select * from whatif_effects
where not (scenario = $scenario and engine = $engine)
union all by name
select
    cast(scenario as varchar) as scenario,
    cast(engine as varchar) as engine,
    cast(level as varchar) as level,
    cast(category as varchar) as category,
    cast(product_id as varchar) as product_id,
    cast(metric as varchar) as metric,
    cast(before as double) as before,
    cast(after as double) as after,
    cast(change as double) as change,
    cast(change_pct as double) as change_pct,
    cast(change_lo as double) as change_lo,
    cast(change_hi as double) as change_hi,
    cast(n_boot as bigint) as n_boot
from staged_whatif_effects
