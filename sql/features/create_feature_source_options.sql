-- Temp view feature_source_options: the options that get features (episode_id, product_id, price,
-- list_price). The features stage stages episode_options here; the market simulation its consideration sets.
create or replace temp view feature_source_options as
select episode_id, product_id, price, list_price
from episode_options
