-- _cand: the good typed rows whose key hash repeats in the file or occurs in the warehouse table (usually
-- none); _collisions compares their exact keys and contents (a hash collision alone never drops a row).
-- The hashes are gathered first (a small set), so the semi-join that picks the rows is cheap.
-- A template: {key} is the key column, {target} the warehouse table.
create or replace temp table _cand as
with hashes as (
    select _h from _typed where _reason is null group by _h having count(*) > 1
    union
    select hash({key}) from {target}
)
select t.*
from _typed as t
semi join hashes as h on h._h = t._h
where t._reason is null
