-- The baselines' predictions (baseline_predictions) of the episodes in `staged_report_episodes` only.
select p.method, p.episode_id, p.product_id, p.score, p.prob
from baseline_predictions as p
where p.episode_id in (select episode_id from staged_report_episodes)
order by p.method, p.episode_id, p.product_id
