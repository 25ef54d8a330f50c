#!/usr/bin/env bash
# The GPU check, run in the repository root of a lent GPU machine (README.md beside this file says how):
# the CUDA tests (tests/test_cuda.py), then benchmarks/simulate.py on the default model's architecture with
# random weights, in fp32 and in bf16. Logs go to $OUT (or /tmp/malles-gpu).
# Carried beside the tree: .whl/ (the project's Python packages the machine lacks, as wheels) and .gpu/
# (the default model's config in .gpu/smollm2, its tokenizer in .gpu/data/models/smollm2-135m-instruct-tokenizer).
set -uo pipefail
OUT=${OUT:-/tmp/malles-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MALLES_DATA_DIR=$PWD/.gpu/data MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true \
  DAGSTER_DISABLE_TELEMETRY=1 DO_NOT_TRACK=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' | tee -a "$OUT/gpu.txt"
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "bf16", torch.cuda.is_bf16_supported())
for p in ("transformers", "peft", "trl", "datasets", "polars", "pyarrow", "numpy", "accelerate"):
    print(p, md.version(p))
PY
python3 -m pytest -p benchmarks.device.no_dagster -p no:cacheprovider -m gpu -q -rs -s tests/test_cuda.py 2>&1 \
  | tee "$OUT/pytest_cuda.log"
python3 benchmarks/device/random_model.py .gpu/smollm2 /tmp/smollm2-random .gpu/data/models/smollm2-135m-instruct-tokenizer
for dt in float32 bfloat16; do
  python3 benchmarks/device/simulate_no_dagster.py --synthetic --model /tmp/smollm2-random --device cuda \
    --dtype "$dt" --batch-size "${BATCH:-64}" --episodes "${EPISODES:-256}" --naive-episodes 64 2>&1 \
    | tee "$OUT/simulate_$dt.log"
done
