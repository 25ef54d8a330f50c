-- One ledger row per ingested file (keyed by its content hash).
insert into ingest_ledger
values (
    $file_sha256, $file_id, $source_file, $source, $table_name, $rows_in, $rows_loaded, $rows_quarantined,
    $rows_duplicate, $status, $message, now()
)
