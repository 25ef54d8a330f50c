-- baseline_metrics: one row per (method, split) with the metrics of docs/evaluation-protocol.md (null where undefined).
-- Reads the staged frame `staged_baseline_metrics`.
create or replace table baseline_metrics as
select
    cast(method as varchar) as method,
    cast(split as varchar) as split,
    cast(n_episodes as bigint) as n_episodes,
    cast(hit1 as double) as hit1,
    cast(hit3 as double) as hit3,
    cast(nll as double) as nll,
    cast(qty_mae as double) as qty_mae,
    cast(qty_wape as double) as qty_wape,
    cast(share_jsd as double) as share_jsd
from staged_baseline_metrics
