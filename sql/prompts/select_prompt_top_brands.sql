-- The brand each prompt episode's customer bought most often in the episode's category strictly before the
-- episode's day (merchandise retail purchases of episode_purchases; ties: the smaller brand text). Episodes
-- without such a purchase have no row.
select episode_id, top_brand
from (
    select
        p.episode_id,
        pr.brand as top_brand,
        row_number() over (partition by p.episode_id order by count(*) desc, pr.brand) as rn
    from prompt_episodes as p
    join episode_purchases as ep
        on ep.customer_id = p.customer_id and ep.category = p.category and ep.day < p.day
    join products as pr on pr.product_id = ep.product_id
    where ep.is_merchandise and pr.brand is not null
    group by p.episode_id, pr.brand
)
where rn = 1
