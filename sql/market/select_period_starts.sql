-- The first day of each period of episode_splits (train, val, test): where the train period ends, and where
-- the trends of the input augmentation stop reading the history in its "period" mode.
select s.period, min(e.day) as first_day
from episode_splits as s
join decision_episodes as e using (episode_id)
group by s.period
order by first_day
