-- Every option of the episodes in the staged list `staged_report_episodes` (episode_id) with what the
-- metrics and the shared quantity predictor need: is_chosen, category, the actual quantity and the
-- quantity features (option_features left-joined: an option without features keeps null ones).
select
    o.episode_id,
    o.product_id,
    o.position,
    o.is_chosen,
    e.category,
    e.quantity,
    f.cust_mean_qty,
    f.prod_mean_qty_28d
from episode_options as o
join decision_episodes as e on e.episode_id = o.episode_id
left join option_features as f on f.episode_id = o.episode_id and f.product_id = o.product_id
where o.episode_id in (select episode_id from staged_report_episodes)
order by o.episode_id, o.position
