-- quarantined_rows: every input row that was not loaded and is not a duplicate, with its reason code.
create table if not exists quarantined_rows (
    source_file varchar not null,
    file_sha256 varchar not null,
    table_name varchar not null,
    row_number bigint,
    raw_row varchar,
    reason varchar not null,
    detail varchar,
    ingested_at timestamp not null
)
