-- Units per category and day of merchandise retail purchases (the observed history): the shelves' trends
-- of the input augmentation (assets/market/augment.py).
select category, day, sum(units)::double as units
from episode_purchases
where is_merchandise and category is not null
group by category, day
order by category, day
