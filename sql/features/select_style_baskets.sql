-- Train-period baskets (those with a train episode) with their merchandise units and lines, for basket size.
with train_baskets as (
    select distinct e.basket_id
    from decision_episodes as e
    join episode_splits as s on s.episode_id = e.episode_id
    where s.period = 'train'
)
select p.customer_id, p.basket_id, sum(p.units) as units, count(*) as lines
from episode_purchases as p
semi join train_baskets as b on b.basket_id = p.basket_id
where p.is_merchandise
group by p.customer_id, p.basket_id
