-- Temp view feature_source_episodes for the shared feature steps (assets/features/logic.py FEATURE_STEPS):
-- the market's occasions, keyed as episodes.
create or replace temp view feature_source_episodes as
select occasion_id as episode_id, customer_id, category, day
from market_occasion_rows
