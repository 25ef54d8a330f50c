-- market_metrics: one row per run of the market simulation (engine, with or without the mean field): the
-- market-level metrics against the actual units and the mean field's convergence. Reads the staged frame
-- `staged_market_metrics` (assets/market/run.py).
create or replace table market_metrics as
select
    cast(engine as varchar) as engine,
    cast(mean_field as boolean) as mean_field,
    cast(share_jsd_cw as double) as share_jsd_cw,
    cast(units_wape_pw as double) as units_wape_pw,
    cast(coverage as double) as coverage,
    cast(n_occasions as bigint) as n_occasions,
    cast(sim_units as double) as sim_units,
    cast(actual_units as double) as actual_units,
    cast(iterations as bigint) as iterations,
    cast(converged as boolean) as converged,
    cast(final_residual as double) as final_residual,
    cast(seconds as double) as seconds
from staged_market_metrics
