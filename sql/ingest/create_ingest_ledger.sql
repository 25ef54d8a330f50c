-- ingest_ledger: one row per ingested file and table, keyed by (content hash, table): one file may feed several
-- tables (a one-file export holding transactions, products and customers); rows_in = loaded + quarantined + duplicate.
create table if not exists ingest_ledger (
    file_sha256 varchar not null,
    file_id integer not null unique,  -- short id the loaded rows carry (raw_transactions.file_id, ...)
    source_file varchar not null,
    source varchar not null,
    table_name varchar not null,
    rows_in bigint not null,
    rows_loaded bigint not null,
    rows_quarantined bigint not null,
    rows_duplicate bigint not null,
    status varchar not null,
    message varchar,
    ingested_at timestamp not null,
    primary key (file_sha256, table_name)
)
