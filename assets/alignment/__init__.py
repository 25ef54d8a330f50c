"""Alignment stage: LoRA post-training of the retail agent on the prompt dataset (trl SFTTrainer + peft).

Thin Dagster wiring; the training rows in data.py, the losses in losses.py, the training loop and the loss curve
in train.py, the warehouse row and the MLflow registry in registry.py, SQL in sql/alignment/.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets._metadata import artifact_metadata, lineage, table_metadata
from assets.alignment import data, registry, train
from resources.mlflow import MlflowResource
from resources.paths import data_dir


class LoraAdapterConfig(dg.Config):
    """The only defaults of the LoRA training: train.settings_of(config) hands every training field on whole."""

    base_model: str = "default"  # "default" (SmolLM2-135M-Instruct), a local model folder or a HF id
    lora_r: int = 16  # LoRA rank (docs/notes.md: r=16 learnt the yes/no form in 12 minutes)
    lora_alpha: int = 32  # LoRA scale numerator (scale alpha/r = 2)
    lora_dropout: float = 0.05  # dropout on the LoRA input path
    top_layers: int = 8  # LoRA on the top N layers only (layers_to_transform); 0 = all layers
    target_modules: list[str] = list(train.LLAMA_PROJECTIONS)  # all linear projections of a layer
    learning_rate: float = 5e-4  # AdamW learning rate (docs/notes.md: 5e-4 with batch 16)
    lr_scheduler: str = "constant_with_warmup"  # no decay: the same rate whatever the step budget
    warmup_steps: int = 5  # linear warmup steps
    batch_size: int = 16  # answers per optimizer step: packed episodes of 10 options go 2 to a step
    # The budget is a number of optimizer steps, so that the adapter (and every LLM figure after it) does not
    # depend on the machine's load: a busy machine stopped a time budget of 8 minutes after 94 steps. 350 steps
    # are the quiet 2-core machine's 12 minutes: 9.55 answers/s (docs/measurements.md) with episodes of 10
    # options, round(16 / 10) = 2 episodes = 20 answers a step (the full run: 31,689 answers in 1,592 steps,
    # 19.9), and 12 min x 60 x 9.55 = 6,876 answers / 20 = 344 steps. 200 steps (7 minutes) were too few: the
    # quick run at f363b74 scored the aligned LLM 0.425 on val and 0.463 on test_all (N = 80), where the
    # 12-minute budget had reached 0.525 on val.
    max_steps: int = 350  # training budget in optimizer steps; 0 = the epochs decide
    # safety cap on the training loop's wall time only, never the budget: the step count decides, so a loaded
    # machine trains the same adapter, slower. Two LoRA trainings on 2 cores (2 torch threads each) ran 8x
    # slower than one (19 s a step instead of 2.3), so the cap is 120 minutes, 10x the quiet 12; where
    # it bites, the run stops early, warns and reports stopped_by="time_cap" in its metadata; 0 = none
    max_minutes: float = 120.0
    epochs: float = 1.0  # passes over the training items at most (350 steps use 700 of 4,000 quick episodes)
    max_train_examples: int = 8000  # rows drawn (seeded) for the unpacked pointwise loss; 0 = all rows. The
    # softmax loss and packing take whole episodes: every row, the step budget decides how many are used
    eval_examples: int = 100  # val rows for the eval loss before and after training
    # bf16 autocast for training where the device multiplies bf16 natively (a GPU, a CPU with AVX-512 BF16 or
    # AMX: ~2.4x faster than fp32, docs/notes.md); elsewhere fp32 whatever this says (emulated bf16 is ~50x slower)
    bf16_autocast: bool = True
    gradient_checkpointing: bool = (
        False  # recompute activations: saves memory, costs time (trl's default is on)
    )
    logging_steps: int = 5  # optimizer steps between two points of the loss curve
    forms: list[str] = ["utility"]  # forms trained on; listwise learnt nothing useful on CPU (docs/notes.md)
    listwise_share: float = 0.25  # share of listwise/quantity rows when forms include them with utility
    max_length: int = 512  # tokens per example (longer ones lose their start; prompts are ~120-320)
    num_threads: int = 2  # torch CPU threads (2 cores here); 0 = torch's default
    # 'softmax' (the episode's choice likelihood over its options: val hit@1 0.455 against 0.42 pointwise at
    # 6 minutes, docs/measurements.md) or 'pointwise' (cross-entropy of each Yes/No answer)
    loss: str = "softmax"
    pack_prefix: bool = True  # one sequence per episode, its prefix computed once for its options: 1.6x ex/s
    # the quantity answer ("1".."9") of each packed episode's chosen option as one more block of the pack, its
    # cross-entropy times this weight added to the loss. Off by default: at 1.0 the 8-minute adapter lost 0.09
    # hit@1 on 301 test episodes (paired, 3.6 standard errors) for no quantity gain at that length
    # (docs/measurements.md); meant against the quantity drift of long training (60 minutes: median 2)
    quantity_weight: float = 0.0
    decay_by_time: bool = False  # learning rate decays to 0 along a cosine of the time cap (machine-bound)
    seed: int = 0  # seed of the row sample, the LoRA init, the shuffling and the dropout
    # a resumable checkpoint every this many steps under data/adapters/_checkpoints/<key>/ (key: base model,
    # prompt dataset and every setting that shapes the training); a materialization that finds one goes on from
    # it instead of step 0 (a 60-minute training that dies is not started over); 0 = no checkpoints
    save_steps: int = 50
    registered_model: str = registry.REGISTERED_MODEL  # MLflow model registry name


@dg.asset(group_name="alignment", kinds={"python", "pytorch", "mlflow"}, deps=["sft_prompt_dataset"])
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: LoraAdapterConfig,
    duckdb: DuckDBResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """A LoRA adapter of the retail agent trained on the latest prompt dataset (by default the softmax over
    each training episode's options of their Yes-minus-No utilities, one packed sequence per episode, with
    the chosen option's quantity answer as one more block when quantity_weight > 0; top layers, a
    seeded budget of optimizer steps under a wall-time cap), saved under data/adapters/<run_id>/, logged and
    registered in the MLflow model registry, and indexed in the DuckDB table lora_adapters."""
    from resources.models import resolve_model

    with duckdb.get_connection() as conn:
        files = registry.latest_prompt_files(conn)
        tags = lineage(context, conn)
    train_rows, evals = data.dataset_rows(
        files,
        config.forms,
        config.listwise_share,
        config.max_train_examples,
        config.eval_examples,
        config.seed,
        by_episode=config.loss == "softmax" or config.pack_prefix,
        with_quantity=config.pack_prefix and config.quantity_weight > 0,
    )
    context.log.info(
        f"lora_adapter: {train_rows.height} train rows, {evals.height} eval rows ({files['run_id']})"
    )
    model_path = str(resolve_model(config.base_model))
    out_dir = data_dir() / "adapters" / context.run.run_id
    settings = train.settings_of(config)
    key = train.checkpoint_key(
        model_path,
        str(files["run_id"]),
        settings,
        {
            "forms": config.forms,
            "listwise_share": config.listwise_share,
            "max_train_examples": config.max_train_examples,
        },
    )
    result = train.train_lora(
        model_path,
        train_rows,
        evals,
        settings,
        out_dir,
        log=context.log.info,
        warn=context.log.warning,
        checkpoint_dir=data_dir() / "adapters" / "_checkpoints" / key,
    )
    png = train.loss_curve_png(result, out_dir.parent / f"{context.run.run_id}_loss_curve.png")
    tags |= {
        "base_model": config.base_model,
        "base_model_path": model_path,
        "dataset_run_id": files["run_id"],
        "stopped_by": result.stopped_by,
    }
    with mlflow.start_run(run_name="lora_adapter", tags=tags) as run:
        import mlflow as mlf

        mlf.log_params({k: str(v)[:500] for k, v in config.model_dump().items()})
        for point in result.loss_history:
            mlf.log_metric("train_loss_curve", point["loss"], step=int(point["step"]))
        mlf.log_metrics(registry.finite(result.metrics()))
        mlf.log_artifact(str(png))
        model_uri, version = registry.log_and_register_adapter(
            out_dir,
            model_path,
            config.registered_model,
            tags={"base_model": config.base_model, "dataset_run_id": files["run_id"]},
        )
    row = registry.adapter_row(context.run.run_id, run.info.run_id, version, result, config.base_model, files)
    with duckdb.get_connection() as conn:
        registry.write_adapter_row(conn, row)
        table = conn.sql("select * from lora_adapters order by created_at desc").pl()
    weights = artifact_metadata(train.adapter_weights_file(out_dir))
    return dg.MaterializeResult(
        metadata={
            **table_metadata(table),
            **registry.finite(result.metrics()),
            "mlflow_run_id": run.info.run_id,
            "mlflow_run_url": dg.MetadataValue.url(mlflow.run_url(run)),
            "base_model": config.base_model,
            "dataset_run_id": files["run_id"],
            "registered_model": f"{config.registered_model} v{version}",
            "model_uri": model_uri,
            "adapter_path": dg.MetadataValue.path(str(out_dir)),
            "adapter_sha256": weights["sha256"],
            "adapter_size_bytes": weights["size_bytes"],
            "loss_curve": dg.MetadataValue.md(registry.png_markdown(png)),
            "stopped_by": result.stopped_by,  # "steps" as planned; "time_cap": the safety cap cut it short
            "max_steps": config.max_steps,
            "time_cap_minutes": config.max_minutes,
        }
    )


ALIGNMENT_ASSETS = [lora_adapter]
