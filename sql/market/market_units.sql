-- market_units: per run (RUN_KEYS) and cell (category, ISO week, product_id or 'other') the
-- simulated units (sum of [weight x] prob x expected_qty) and the actual units (a product outside the set counts
-- to 'other').
-- Reads the staged frame `staged_market_units` (assets/market/run.py).
create or replace table market_units as
select
    cast(engine as varchar) as engine,
    cast(population as varchar) as population,
    cast(weighting as varchar) as weighting,
    cast(calibrated as boolean) as calibrated,
    cast(mean_field as boolean) as mean_field,
    cast(category as varchar) as category,
    cast(week as varchar) as week,
    cast(product_id as varchar) as product_id,
    cast(sim_units as double) as sim_units,
    cast(actual_units as double) as actual_units
from staged_market_units
order by engine, population, weighting, calibrated, mean_field, category, week, product_id
