-- market_stability: per stability engine and mode (mean_field) the sample-mode runs over seeds:
-- share_cv_cw, top-1 agreement (the occasions' draws) and per-cell top-1 agreement (assets/market/stability.py).
-- Reads the staged frame `staged_market_stability` (assets/market/run.py).
create or replace table market_stability as
select
    cast(engine as varchar) as engine,
    cast(mean_field as boolean) as mean_field,
    cast(seeds as bigint) as seeds,
    cast(share_cv_cw as double) as share_cv_cw,
    cast(top1_agreement as double) as top1_agreement,
    cast(cell_top1_all as double) as cell_top1_all,
    cast(cell_top1_pairwise as double) as cell_top1_pairwise,
    cast(iterations_mean as double) as iterations_mean,
    cast(converged as boolean) as converged,
    cast(seconds_mean as double) as seconds_mean,
    cast(seconds_total as double) as seconds_total
from staged_market_stability
order by engine, mean_field
