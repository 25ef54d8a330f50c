-- baseline_best_classic: per split, the classic method chosen on the split's val analogue (the bar an LLM method
-- must clear; rule in assets/evaluation/best_classic.py), with the val split and figure that chose it.
-- Reads the staged frame `staged_baseline_best_classic`.
create or replace table baseline_best_classic as
select
    cast(split as varchar) as split,
    cast(method as varchar) as method,
    cast(chosen_on as varchar) as chosen_on,
    cast(chosen_on_n as bigint) as chosen_on_n,
    cast(chosen_on_value as double) as chosen_on_value
from staged_baseline_best_classic
