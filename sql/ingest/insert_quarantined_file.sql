-- Quarantine every row of a staged file with one reason (missing_columns, extra_columns, bad_expression):
-- the file is rejected whole and nothing of it is lost. A template like insert_quarantined_rows.
insert into quarantined_rows
select $source_file, $file_sha256, $table_name, s._row, {raw_row}, $reason, $detail, now()
from {source} as s
