-- whatif_elasticities: per scenario and engine, the price-elasticity matrix of the affected category's top-K
-- products around the baseline (central difference through the mean field). Created empty here when missing;
-- whatif_elasticities_replace.sql replaces one (scenario, engine)'s rows (assets/market/whatif.py).
create table if not exists whatif_elasticities (
    scenario varchar,
    engine varchar,
    category varchar,
    product_id varchar,
    price_product_id varchar,
    elasticity double,
    units_base double,
    units_minus double,
    units_plus double
)
