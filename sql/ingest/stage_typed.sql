-- _typed: the typed rows of the staged file, computed once: canonical columns, each row's first failing check
-- (_reason, _detail; NULL when good) and a 64-bit hash of its key (_h) for the duplicate search. Every later
-- step (candidates, insert, quarantine) reads this table instead of recomputing the typed query.
-- A template: {typed} is the typed_<table> query, {key} the table's key column.
create or replace temp table _typed as
select t.*, hash(t.{key}) as _h
from ({typed}) as t
