-- _src: one CSV file read as text (every column VARCHAR), _row = 1-based data row in file order.
-- Lines with a wrong field count or invalid UTF-8 go to the temp table _csv_rejects instead of failing.
-- $strict_mode is false only for a header ending in CRLF over rows ending in LF (DuckDB takes the header's).
create or replace temp table _src as
select row_number() over () as _row, *
from read_csv(
    $path,
    columns = $columns,
    header = true,
    auto_detect = false,
    delim = $delimiter,
    quote = $quote,
    escape = $escape,
    strict_mode = $strict_mode,
    store_rejects = true,
    rejects_table = '_csv_rejects',
    rejects_scan = '_csv_reject_scans'
)
