-- _cand: the good typed rows whose key hash repeats in the file or whose key is already in the warehouse table
-- (usually none); _collisions compares their exact keys and contents (a hash collision alone never drops a row).
-- The hashes are gathered first (a small set), so the semi-join that picks the rows is cheap. The warehouse is
-- probed with an exact semi-join on the key: DuckDB pushes the file's key range into the warehouse scan, so row
-- groups outside it (another source, earlier files) are skipped instead of hashing every warehouse key.
-- A template: {key} is the key column, {target} the warehouse table.
create or replace temp table _cand as
with hashes as (
    select _h from _typed where _reason is null group by _h having count(*) > 1
    union
    select hash(w.{key})
    from {target} as w
    semi join (select {key} from _typed where _reason is null) as f on f.{key} = w.{key}
)
select t.*
from _typed as t
semi join hashes as h on h._h = t._h
where t._reason is null
