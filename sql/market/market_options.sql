-- Builds market_options: one row per (occasion, option) of the consideration sets, with set_rank, source
-- ('own', 'best_seller', 'scenario'), in_set_actual, the option prices and price_basis, and every feature
-- column of option_features computed by the same SQL (the temp view feature_rows of
-- sql/features/create_feature_rows.sql over the staged market options).
create or replace table market_options as
select
    c.occasion_id,
    c.product_id,
    c.set_rank,
    c.source,
    c.in_set_actual,
    c.price,
    c.list_price,
    c.price_basis,
    f.* exclude (episode_id, product_id)
from market_option_candidates as c
left join feature_rows as f on f.episode_id = c.occasion_id and f.product_id = c.product_id
order by c.occasion_id, c.set_rank
