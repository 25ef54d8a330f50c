-- Temp view feature_source_options for the shared feature steps: the market's consideration sets with their
-- prices (so rel_price compares an option with the mean price of its consideration set).
create or replace temp view feature_source_options as
select occasion_id as episode_id, product_id, price, list_price
from market_option_candidates
