-- Append the staged sample counts `staged_retail_decision_samples` (one method of one run).
insert into retail_decision_samples
select
    cast(run_id as varchar),
    cast(method as varchar),
    cast(episode_id as varchar),
    cast(sample_run as bigint),
    cast(product_id as varchar),
    cast(n as bigint)
from staged_retail_decision_samples
