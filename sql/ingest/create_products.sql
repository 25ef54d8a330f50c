-- products: one row per product_id (docs/tables.md); is_merchandise is false for the mapping's `exclude`.
create table if not exists products (
    product_id varchar not null,
    category varchar,
    brand varchar,
    department varchar,
    description varchar,
    attributes varchar,
    is_merchandise boolean not null,
    file_id integer not null  -- the file the row came from: ingest_ledger.file_id
)
