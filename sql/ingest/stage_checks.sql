-- _checks: one small row per staged row: its row number, a 64-bit hash of its key and its first failing check
-- (_reason, _detail; NULL when good). No text ids are kept, so this pass is cheap; the typed rows are
-- recomputed only for the few collision candidates and for the final insert.
-- A template: {typed} is the typed_<table> query, {key} the table's key column.
create or replace temp table _checks as
select _row, hash({key}) as _h, _reason, _detail
from ({typed}) as t
