-- The ledger row of a file's content loaded into one table (none when it was never ingested there).
select status, ingested_at, source_file
from ingest_ledger
where file_sha256 = $file_sha256 and table_name = $table_name
