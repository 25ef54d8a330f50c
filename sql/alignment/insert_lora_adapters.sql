-- append one trained adapter to lora_adapters
insert into lora_adapters
values (
    $dagster_run_id, $mlflow_run_id, $registered_version, $adapter_path, $base_model, $dataset_run_id,
    $train_loss, $eval_loss, $examples_per_sec, current_timestamp::timestamp
)
