-- Whether ingest_ledger is keyed by the file hash alone (written before one file could feed several tables).
select count(*) > 0
from duckdb_constraints()
where schema_name = 'main'
    and table_name = 'ingest_ledger'
    and constraint_type = 'PRIMARY KEY'
    and constraint_column_names = ['file_sha256']
