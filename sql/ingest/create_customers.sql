-- customers: one row per customer_id (docs/tables.md); segment NULL when unknown.
create table if not exists customers (
    customer_id varchar not null,
    segment varchar,
    attributes varchar,
    source varchar not null,
    file_sha256 varchar not null
)
