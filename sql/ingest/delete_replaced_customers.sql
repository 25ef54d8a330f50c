-- Remove the customers registered from transactions that this customer file now describes ('replace').
delete from customers
where customer_id in (
    select t.customer_id from _cand as t join _collisions as c on c._row = t._row where c._outcome = 'replace'
)
