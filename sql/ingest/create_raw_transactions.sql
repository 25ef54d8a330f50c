-- raw_transactions: canonical transaction lines, appended one source file at a time (docs/tables.md).
-- Uniqueness of txn_id is enforced by the ingest (duplicates counted, conflicts quarantined), not by an index.
create table if not exists raw_transactions (
    txn_id varchar not null,
    basket_id varchar not null,
    ts timestamp not null,
    customer_id varchar not null,
    product_id varchar not null,
    quantity bigint not null,
    unit_price double not null,
    list_price double not null,
    channel varchar not null,
    file_id integer not null  -- the file the row came from: ingest_ledger.file_id
)
