-- whatif_effects: per scenario and engine, per product and category: units, revenue and share before and after
-- the scenario, the change and its bootstrap interval over customers (tidy: one row per metric). Created empty
-- here when missing; whatif_effects_replace.sql replaces one (scenario, engine)'s rows
-- (assets/market/whatif.py).
create table if not exists whatif_effects (
    scenario varchar,
    engine varchar,
    level varchar,
    category varchar,
    product_id varchar,
    metric varchar,
    before double,
    after double,
    change double,
    change_pct double,
    change_lo double,
    change_hi double,
    n_boot bigint
)
