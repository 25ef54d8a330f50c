-- market_calibration: per engine, before and after its calibration f (fitted on val), the choice
-- probabilities' nll and expected calibration error of the top choice, top-1 hit, P(OTHER), and the quantity
-- MAE on the simulated period's occasions (without the mean field; assets/market/calibrate.py).
-- Reads the staged frame `staged_market_calibration` (assets/market/run.py).
create or replace table market_calibration as
select
    cast(population as varchar) as population,
    cast(engine as varchar) as engine,
    cast(calibrated as boolean) as calibrated,
    cast(n_occasions as bigint) as n_occasions,
    cast(nll as double) as nll,
    cast(n_zero_prob as bigint) as n_zero_prob,
    cast(ece_top as double) as ece_top,
    cast(top1_hit as double) as top1_hit,
    cast(p_other_mean as double) as p_other_mean,
    cast(other_share as double) as other_share,
    cast(qty_mae as double) as qty_mae,
    cast(n_qty as bigint) as n_qty
from staged_market_calibration
order by population, engine, calibrated
