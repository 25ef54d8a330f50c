-- The bar of each split: the classic method baseline_report chose on the split's val analogue
-- (assets/evaluation/best_classic.py), read by eval_report for its paired differences.
select split, method, chosen_on
from baseline_best_classic
order by split
