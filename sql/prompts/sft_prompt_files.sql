-- The index of the latest sft_prompt_dataset: one row per (file, form) with its row count and path
-- (from the registered frame sft_prompt_files_new).
create or replace table sft_prompt_files as
select run_id, file, form, n_rows, path, now()::timestamp as created_at
from sft_prompt_files_new
