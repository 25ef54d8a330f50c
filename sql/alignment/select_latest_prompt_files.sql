-- the files of the latest prompt dataset (the run of the newest sft_prompt_files row): run_id, file, path
select run_id, file, any_value(path) as path
from sft_prompt_files
where run_id = (select run_id from sft_prompt_files order by created_at desc, run_id desc limit 1)
group by run_id, file
order by file
