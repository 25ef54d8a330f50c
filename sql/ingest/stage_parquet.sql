-- _src: one Parquet file read as typed, _row = 1-based row in file order. Staged once in a temp table so
-- that every later step reads it in parallel (DuckDB reads one row group of a Parquet file per thread).
create or replace temp table _src as
select * exclude (file_row_number), file_row_number + 1 as _row
from read_parquet($path, file_row_number = true)
