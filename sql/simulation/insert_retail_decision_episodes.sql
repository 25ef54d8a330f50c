-- Append the staged membership `staged_retail_decision_episodes` to retail_decision_episodes.
insert into retail_decision_episodes
select
    cast(run_id as varchar),
    cast(method as varchar),
    cast(episode_id as varchar),
    cast(split as varchar)
from staged_retail_decision_episodes
