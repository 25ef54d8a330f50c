-- When a CSV has rejected lines, give the accepted rows their data row numbers: the k-th accepted row is the
-- k-th row number not taken by a rejected line (row number = line - 1; exact unless a value spans lines).
update _src
set _row = f.rn
from (
    select rn, row_number() over (order by rn) as k
    from range(1, $n_total + 1) as r(rn)
    where rn not in (select line - 1 from _csv_rejects)
) as f
where _src._row = f.k
