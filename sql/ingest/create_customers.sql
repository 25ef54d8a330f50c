-- customers: one row per customer_id (docs/tables.md); segment NULL when unknown.
create table if not exists customers (
    customer_id varchar not null,
    segment varchar,
    attributes varchar,
    file_id integer not null  -- the file the row came from: ingest_ledger.file_id
)
