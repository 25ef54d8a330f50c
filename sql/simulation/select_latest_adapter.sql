-- The newest LoRA adapter of the alignment stage (lora_adapters, newest created_at); none when empty.
select adapter_path, base_model, dagster_run_id, mlflow_run_id, created_at
from lora_adapters
order by created_at desc nulls last, dagster_run_id desc
limit 1
