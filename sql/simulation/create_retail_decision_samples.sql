-- retail_decision_samples: sample mode's answers, per (method, episode, run) the count of each answer
-- (product_id NULL counts the answers still unparseable after retries). Rows replaced per method.
create table if not exists retail_decision_samples (
    run_id varchar,
    method varchar,
    episode_id varchar,
    sample_run bigint,
    product_id varchar,
    n bigint
)
