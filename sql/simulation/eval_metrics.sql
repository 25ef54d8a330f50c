-- eval_metrics: one row per (sample, method, split): the LLM methods, their calibrated hybrids and the
-- baselines recomputed on the same sample episodes. Reads the staged frame `staged_eval_metrics`.
create or replace table eval_metrics as
select
    cast(sample as varchar) as sample,
    cast(method as varchar) as method,
    cast(kind as varchar) as kind,
    cast(split as varchar) as split,
    cast(n_episodes as bigint) as n_episodes,
    cast(hit1 as double) as hit1,
    cast(hit3 as double) as hit3,
    cast(nll as double) as nll,
    cast(qty_mae as double) as qty_mae,
    cast(qty_wape as double) as qty_wape,
    cast(share_jsd as double) as share_jsd,
    cast(top1_agreement as double) as top1_agreement,
    cast(share_cv as double) as share_cv
from staged_eval_metrics
