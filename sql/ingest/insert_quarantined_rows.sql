-- Quarantine the rows that failed a check (_typed) and the rows _collisions sets aside (conflicts, as
-- $conflict_reason; a product's rows under a less frequent category, as other_category), raw row as JSON.
-- A template: {source} is the staged file and {raw_row} the JSON of its source columns.
insert into quarantined_rows
select $source_file, $file_sha256, $table_name, q._row, {raw_row}, q.reason, q.detail, now()
from (
    select _row, _reason as reason, _detail as detail from _typed where _reason is not null
    union all
    select _row, case when _outcome = 'conflict' then $conflict_reason else _outcome end, _detail
    from _collisions
    where _outcome in ('conflict', 'other_category')
) as q
join {source} as s on s._row = q._row
