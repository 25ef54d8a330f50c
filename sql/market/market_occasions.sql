-- Builds market_occasions: one row per occasion (market_occasion_rows) with the size of its consideration set
-- (n_options) and whether the set holds the actual product (actual_in_set, for coverage).
create or replace table market_occasions as
select
    o.*,
    cast(coalesce(n.n_options, 0) as integer) as n_options,
    coalesce(n.actual_in_set, false) as actual_in_set
from market_occasion_rows as o
left join (
    select occasion_id, count(*) as n_options, bool_or(in_set_actual) as actual_in_set
    from market_options
    group by occasion_id
) as n on n.occasion_id = o.occasion_id
order by o.ts, o.basket_id, o.category
