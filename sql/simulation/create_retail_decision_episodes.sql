-- retail_decision_episodes: the split membership (docs/evaluation-protocol.md sample) of the episodes each method decided.
create table if not exists retail_decision_episodes (
    run_id varchar,
    method varchar,
    episode_id varchar,
    split varchar
)
