-- _cand: the full typed rows of the good rows whose key hash repeats in the file or occurs in the warehouse
-- table (usually none); _collisions compares their exact keys and contents.
-- A template: {typed} is the typed_<table> query, {key} the key column, {target} the warehouse table.
create or replace temp table _cand as
select t.*
from ({typed}) as t
where t._row in (
    select _row
    from _checks
    where _reason is null
        and (
            _h in (select _h from _checks where _reason is null group by _h having count(*) > 1)
            or _h in (select hash({key}) from {target})
        )
)
