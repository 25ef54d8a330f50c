-- Per source and table: files, rows in/loaded/quarantined/duplicate (ledger) and quarantined rows by reason (JSON).
with ledger as (
    select
        source,
        table_name,
        count(*) as files,
        count(*) filter (where status = 'rejected') as files_rejected,
        sum(rows_in) as rows_in,
        sum(rows_loaded) as rows_loaded,
        sum(rows_quarantined) as rows_quarantined,
        sum(rows_duplicate) as rows_duplicate
    from ingest_ledger
    group by all
),
by_reason as (
    select l.source, q.table_name, q.reason, count(*) as n
    from quarantined_rows as q
    join ingest_ledger as l on l.file_sha256 = q.file_sha256 and l.table_name = q.table_name
    group by all
),
reasons as (
    select source, table_name, to_json(map(list(reason order by reason), list(n order by reason))) as quarantined_by_reason
    from by_reason
    group by all
)
select
    l.source,
    l.table_name,
    cast(l.files as bigint) as files,
    cast(l.files_rejected as bigint) as files_rejected,
    cast(l.rows_in as bigint) as rows_in,
    cast(l.rows_loaded as bigint) as rows_loaded,
    cast(l.rows_quarantined as bigint) as rows_quarantined,
    cast(l.rows_duplicate as bigint) as rows_duplicate,
    cast(coalesce(r.quarantined_by_reason, '{}') as varchar) as quarantined_by_reason
from ledger as l
left join reasons as r on r.source = l.source and r.table_name = l.table_name
order by l.source, l.table_name
