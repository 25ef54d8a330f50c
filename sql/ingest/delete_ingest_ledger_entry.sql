-- Drop the ledger row of an earlier rejected attempt at a file into one table (it is being ingested again).
delete from ingest_ledger where file_sha256 = $file_sha256 and table_name = $table_name
