-- eval_vs_best_classic: per (LLM method or hybrid, split) of eval_report's main sample, the paired hit@1
-- difference against the split's best classic method (baseline_best_classic, chosen on validation), on the
-- episodes both scored. Reads the staged frame `staged_eval_vs_best_classic`.
create or replace table eval_vs_best_classic as
select
    cast(method as varchar) as method,
    cast(split as varchar) as split,
    cast(bar_method as varchar) as bar_method,
    cast(chosen_on as varchar) as chosen_on,
    cast(n_episodes as bigint) as n_episodes,
    cast(hit1 as double) as hit1,
    cast(bar_hit1 as double) as bar_hit1,
    cast(diff as double) as diff,
    cast(se as double) as se
from staged_eval_vs_best_classic
