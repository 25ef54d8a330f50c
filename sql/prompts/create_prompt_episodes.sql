-- Temp table prompt_episodes: the episodes of one period that get prompts. Each episode's sample key is
-- docs/evaluation-protocol.md's md5("{seed}|{basket_id}|{category}"); with $n_per_split > 0 only the $n_per_split
-- smallest keys of each split are kept (train: of the whole period; test: of test_all and of each of
-- test_sparse, test_cold, test_new, so every named split has its protocol sample). $fit_only keeps
-- use_for_fit episodes only (train).
create or replace temp table prompt_episodes as
with eligible as (
    select
        e.episode_id,
        e.basket_id,
        e.category,
        e.customer_id,
        e.day,
        e.chosen_product_id,
        e.quantity,
        s.period,
        coalesce(s.in_test_sparse, false) as in_test_sparse,
        coalesce(s.in_test_cold, false) as in_test_cold,
        coalesce(s.in_test_new, false) as in_test_new,
        md5(cast($seed as varchar) || '|' || e.basket_id || '|' || e.category) as sample_key
    from decision_episodes as e
    join episode_splits as s on s.episode_id = e.episode_id
    where s.period = $period and (not $fit_only or s.use_for_fit)
),
ranked as (
    select
        *,
        row_number() over (order by sample_key, episode_id) as rn_all,
        row_number() over (partition by in_test_sparse order by sample_key, episode_id) as rn_sparse,
        row_number() over (partition by in_test_cold order by sample_key, episode_id) as rn_cold,
        row_number() over (partition by in_test_new order by sample_key, episode_id) as rn_new
    from eligible
)
select
    episode_id, basket_id, category, customer_id, day, chosen_product_id, quantity, period,
    in_test_sparse, in_test_cold, in_test_new, sample_key
from ranked
where $n_per_split <= 0
    or rn_all <= $n_per_split
    or (in_test_sparse and rn_sparse <= $n_per_split)
    or (in_test_cold and rn_cold <= $n_per_split)
    or (in_test_new and rn_new <= $n_per_split)
