-- Quarantine the CSV lines DuckDB's reader rejected (wrong field count, invalid UTF-8, malformed quoting),
-- one row per line with its first error; row_number = line - 1 (the header is line 1).
insert into quarantined_rows
select
    $source_file,
    $file_sha256,
    $table_name,
    cast(line as bigint) - 1,
    to_json({'raw_line': csv_line}),
    case
        when error_type in ('MISSING COLUMNS', 'TOO MANY COLUMNS') then 'wrong_field_count'
        when error_type = 'INVALID ENCODING' then 'bad_encoding'
        else 'malformed_csv'
    end,
    split_part(error_message, chr(10), 1),
    now()
from (
    select *, row_number() over (partition by line order by column_idx) as k from _csv_rejects
)
where k = 1
