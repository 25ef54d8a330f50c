-- The Dagster runs whose decisions each method's rows come from (lineage of eval_report's figures: the
-- retail_decisions run of each id names the model and the adapter).
select method, string_agg(distinct run_id, ', ' order by run_id) as run_ids
from retail_decision_episodes
group by method
order by method
