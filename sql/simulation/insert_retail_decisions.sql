-- Append the staged decisions `staged_retail_decisions` (one method of one run) to retail_decisions.
insert into retail_decisions
select
    cast(run_id as varchar),
    cast(method as varchar),
    cast(episode_id as varchar),
    cast(product_id as varchar),
    cast(utility as double),
    cast(prob as double),
    cast(is_top as boolean),
    cast(expected_qty as double),
    cast(median_qty as double)
from staged_retail_decisions
