-- baseline_predictions: per (method, episode, option) of the val and test episodes: score and prob
-- (prob null for methods without probabilities). Reads the staged frame `staged_baseline_predictions`.
create or replace table baseline_predictions as
select
    cast(method as varchar) as method,
    cast(episode_id as varchar) as episode_id,
    cast(product_id as varchar) as product_id,
    cast(score as double) as score,
    cast(prob as double) as prob
from staged_baseline_predictions
