-- retail_decisions: per (method, episode, option) the LLM agent's utility, choice probability, top flag and
-- the expected quantity of the top option (on the top row only). Created once; rows replaced per method.
create table if not exists retail_decisions (
    run_id varchar,
    method varchar,
    episode_id varchar,
    product_id varchar,
    utility double,
    prob double,
    is_top boolean,
    expected_qty double,
    median_qty double
)
