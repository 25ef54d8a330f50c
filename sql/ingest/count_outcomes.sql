-- The outcome counts of a staged file: rows failing a check, rows set aside by _collisions (conflicts and a
-- product's rows under a less frequent category), and duplicates.
select
    (select count(_reason) from _typed),
    (select count(*) filter (where _outcome in ('conflict', 'other_category')) from _collisions),
    (select count(*) filter (where _outcome = 'duplicate') from _collisions)
