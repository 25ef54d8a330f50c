-- lora_adapters: one row per trained LoRA adapter (appended; downstream takes the newest created_at)
create table if not exists lora_adapters (
    dagster_run_id varchar,
    mlflow_run_id varchar,
    registered_version varchar,
    adapter_path varchar,
    base_model varchar,
    dataset_run_id varchar,
    train_loss double,
    eval_loss double,
    examples_per_sec double,
    created_at timestamp
)
