-- Temp table market_scenario_products (empty): no scenario. A scenario stages its (category, product_id) pairs
-- here, with an optional price and list_price that override the protocol's option prices (NULL: keep them);
-- assets/market/occasions.py stage_scenario_products copies a given table into this shape.
create or replace temp table market_scenario_products (
    category varchar,
    product_id varchar,
    price double,
    list_price double
)
