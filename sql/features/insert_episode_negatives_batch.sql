-- Fills episode_negatives for one batch of episodes (eidx % $n_batches = $batch): the $n_negatives
-- products (pidx) of the episode's (category, day) assortment other than the actual one with the smallest
-- md5('{seed}|{basket_id}|{category}|{product_id}') (lowercase hex, compared as text). Batches keep the
-- top-n aggregation's state in memory (all episodes at once spill tens of GB).
insert into episode_negatives
select
    e.eidx,
    min_by(a.pidx, md5(e.hash_prefix || a.product_id), $n_negatives) as negatives
from episode_heads as e
join category_day_assortment as a
    on a.category = e.category and a.day = e.day and a.pidx <> e.chosen_pidx
where e.eidx % $n_batches = $batch
group by e.eidx
