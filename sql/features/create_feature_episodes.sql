-- Temp table feature_episodes: the staged episodes (feature_source_episodes) with integer keys (eidx, cidx,
-- catidx), the day before d, the first day before the history window (d - $history_days - 1), the choice
-- set's mean option price, and the customer's category history before d.
create or replace temp table feature_episodes as
with keyed as (
    select
        e.episode_id,
        cast(row_number() over (order by e.episode_id) as integer) as eidx,
        c.cidx,
        k.catidx,
        e.day,
        e.day - 1 as day_before,
        e.day - ($history_days::integer + 1) as day_before_window
    from feature_source_episodes as e
    join (select distinct customer_id, cidx from keyed_purchases) as c on c.customer_id = e.customer_id
    join (select distinct category, catidx from feature_keys) as k on k.category = e.category
),
set_means as (
    select episode_id, avg(price) as mean_price from feature_source_options group by episode_id
)
select
    d.*,
    m.mean_price,
    coalesce(h.cum_baskets, 0) as cust_category_purchases,
    h.cum_units / h.cum_n as cust_mean_qty
from keyed as d
join set_means as m on m.episode_id = d.episode_id
asof left join customer_category_days as h
    on h.cidx = d.cidx and h.catidx = d.catidx and d.day_before >= h.day
