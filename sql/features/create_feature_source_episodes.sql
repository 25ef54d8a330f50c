-- Temp view feature_source_episodes: the episodes whose options get features (episode_id, customer_id,
-- category, day). The features stage stages decision_episodes here; the market simulation stages its
-- occasions (sql/market/create_feature_source_episodes.sql) and runs the same steps.
create or replace temp view feature_source_episodes as
select episode_id, customer_id, category, day
from decision_episodes
