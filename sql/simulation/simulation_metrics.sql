-- simulation_metrics: one row per (method, split) of the LLM variants and of the baselines recomputed on
-- the same sample episodes. Reads the staged frame `staged_simulation_metrics`.
create or replace table simulation_metrics as
select
    cast(method as varchar) as method,
    cast(kind as varchar) as kind,
    cast(split as varchar) as split,
    cast(n_episodes as bigint) as n_episodes,
    cast(hit1 as double) as hit1,
    cast(hit3 as double) as hit3,
    cast(nll as double) as nll,
    cast(qty_mae as double) as qty_mae,
    cast(qty_wape as double) as qty_wape,
    cast(share_jsd as double) as share_jsd
from staged_simulation_metrics
