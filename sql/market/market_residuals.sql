-- market_residuals: per mean-field run (RUN_KEYS) and iteration k the fixed-point residual on units
-- (the protocol's max |m_k+1 - m_k| / max(1, m_k)), the same on purchases, and the seconds the pass took.
-- Reads the staged frame `staged_market_residuals` (assets/market/run.py).
create or replace table market_residuals as
select
    cast(engine as varchar) as engine,
    cast(population as varchar) as population,
    cast(weighting as varchar) as weighting,
    cast(calibrated as boolean) as calibrated,
    cast(mean_field as boolean) as mean_field,
    cast(iteration as bigint) as iteration,
    cast(residual as double) as residual,
    cast(residual_purchases as double) as residual_purchases,
    cast(seconds as double) as seconds
from staged_market_residuals
order by engine, population, weighting, calibrated, mean_field, iteration
