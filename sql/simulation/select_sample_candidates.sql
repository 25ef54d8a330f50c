-- The candidate episodes of the simulation sample: every episode of the periods in $periods (a list such as
-- ['test']) with its split flags and docs/evaluation-protocol.md's sample key md5("{seed}|{basket_id}|{category}").
-- The seeded N-per-split sample itself is taken by assets.evaluation.baselines.split_membership.
select
    e.episode_id,
    s.period,
    coalesce(s.in_test_sparse, false) as in_test_sparse,
    coalesce(s.in_test_cold, false) as in_test_cold,
    coalesce(s.in_test_new, false) as in_test_new,
    md5(cast($seed as varchar) || '|' || e.basket_id || '|' || e.category) as sample_key
from decision_episodes as e
join episode_splits as s on s.episode_id = e.episode_id
where list_contains($periods, s.period)
order by e.episode_id
