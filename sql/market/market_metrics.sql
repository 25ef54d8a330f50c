-- market_metrics: one row per run of the market simulation, keyed by (engine, population, weighting,
-- calibrated, mean_field): the market-level metrics against the actual units and the mean field's convergence.
-- Reads the staged frame `staged_market_metrics` (assets/market/run.py).
create or replace table market_metrics as
select
    cast(engine as varchar) as engine,
    cast(population as varchar) as population,
    cast(weighting as varchar) as weighting,
    cast(calibrated as boolean) as calibrated,
    cast(mean_field as boolean) as mean_field,
    cast(share_jsd_cw as double) as share_jsd_cw,
    cast(units_wape_pw as double) as units_wape_pw,
    cast(vs_population_jsd as double) as vs_population_jsd,
    cast(coverage as double) as coverage,
    cast(n_occasions as bigint) as n_occasions,
    cast(n_customers as bigint) as n_customers,
    cast(sim_units as double) as sim_units,
    cast(actual_units as double) as actual_units,
    cast(iterations as bigint) as iterations,
    cast(converged as boolean) as converged,
    cast(final_residual as double) as final_residual,
    cast(seconds as double) as seconds
from staged_market_metrics
order by engine, population, weighting, calibrated, mean_field
