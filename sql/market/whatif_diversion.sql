-- whatif_diversion: per scenario, engine and delisting: the diversion ratio to every other product of the
-- category (OTHER included), from units and from purchases. Created empty here when missing;
-- whatif_diversion_replace.sql replaces one (scenario, engine)'s rows (assets/market/whatif.py).
create table if not exists whatif_diversion (
    scenario varchar,
    engine varchar,
    delisting bigint,
    category varchar,
    delisted varchar,
    product_id varchar,
    units_before double,
    units_after double,
    diversion double,
    diversion_purchases double
)
