-- Drop the quarantined rows of an earlier rejected attempt at a file into one table (it is being ingested again).
delete from quarantined_rows where file_sha256 = $file_sha256 and table_name = $table_name
