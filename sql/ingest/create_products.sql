-- products: one row per product_id (docs/tables.md); is_merchandise is false for the mapping's `exclude`.
create table if not exists products (
    product_id varchar not null,
    category varchar,
    brand varchar,
    department varchar,
    description varchar,
    attributes varchar,
    is_merchandise boolean not null,
    source varchar not null,
    file_sha256 varchar not null
)
