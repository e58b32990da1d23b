#!/bin/bash
# The prepared run for a lent GPU (the `device` tool's `run`, one call): the
# GPU-marked test, where a train step's time goes (step_bench, also with XLA's
# command buffers widened), the row-optimizer microbenchmark, whole epochs at the
# BARS preset (issue 10's ">= 5M samples/s end to end" goal), then one real
# `python -m train` epoch on the same data. Logs and JSON go to $OUT.
#   run: bash benchmarks/gpu_run.sh [STAGE...]   (carry .whl: grain and two of its deps)
# STAGEs: test step fixed rowopt epoch train bf16 prep (default: all but bf16 and prep,
# which a second call runs: `bash benchmarks/gpu_run.sh bf16 prep`, ~6 min).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}
ROWS=${ROWS:-4000000}
mkdir -p "$OUT"
STAGES=" ${*:-test step fixed rowopt epoch train} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
if ! python3 -c "import grain" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
nvidia-smi -L
python3 -c "import jax, flax, optax, grain, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" || exit 1

want test && JAX_PLATFORMS=cuda timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_interaction.py -k gpu 2>&1 | tee "$OUT/pytest_gpu.log" | tail -3

if want step; then
timeout 150 python3 -m benchmarks.step_bench --optimizers rowwise_adagrad,lazy_adam --k 8 \
  --json "$OUT/step_bench_gpu.json" 2>&1 | tee "$OUT/step_bench_gpu.log"
XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1" \
  timeout 60 python3 -m benchmarks.step_bench --optimizers rowwise_adagrad,lazy_adam --k "" \
  --json "$OUT/step_bench_gpu_cmdbuf.json" 2>&1 | tail -6 | tee "$OUT/step_bench_gpu_cmdbuf.log"
fi

# Fixed cost per step: the same step at 4x the batch.
want fixed && timeout 60 python3 -m benchmarks.step_bench --optimizers rowwise_adagrad --k "" \
  --batch 16384 --json "$OUT/step_bench_gpu_16k.json" 2>&1 | tail -4 | tee "$OUT/step_bench_gpu_16k.log"

want rowopt && timeout 45 python3 -m benchmarks.row_optimizer_bench --json "$OUT/row_optimizer_bench_gpu.json" 2>&1 | tee "$OUT/row_optimizer_bench_gpu.log"

want epoch && timeout 200 python3 -m benchmarks.epoch_bench --preset criteo_bars --rows $ROWS --workdir /tmp/eb \
  --modes "step only,host pipeline,resident,resident input only" \
  --variant train.embedding_optimizer=lazy_adam \
  --variant train.embedding_optimizer=rowwise_adagrad \
  --json "$OUT/epoch_bench_gpu.json" 2>&1 | tee "$OUT/epoch_bench_gpu.log"

# Issue 24 part 2: bfloat16 compute (float32 master weights) against float32, resident.
want bf16 && timeout 200 python3 -m benchmarks.epoch_bench --preset criteo_bars --rows $ROWS --workdir /tmp/eb \
  --modes "step only,resident" --variant model.compute_dtype=float32 --variant model.compute_dtype=bfloat16 \
  --json "$OUT/epoch_bench_gpu_bf16.json" 2>&1 | tee "$OUT/epoch_bench_gpu_bf16.log"

# Issue 24 part 5: preparation on the host's 16 cores (goal: 16 workers >= 8x one worker).
want prep && timeout 240 python3 -m benchmarks.data_bench --rows 2000000 --workers 1,2,4,8,16 --engines \
  --batches 50 --json "$OUT/data_bench_gpu_host.json" 2>&1 | tee "$OUT/data_bench_gpu_host.log"

# The trainer itself on the same rows: one epoch of the GIN stage, its logged samples/s.
want train || exit 0
[ -f /tmp/eb/criteo_$ROWS.tsv ] || python3 -c "from gin_jax.data import SyntheticSpec, write_criteo_tsv as w; w('/tmp/eb/criteo_$ROWS.tsv', SyntheticSpec(num_rows=$ROWS, max_vocab=2_000_000, seed=0))"
timeout 100 python3 -m train --train /tmp/eb/criteo_$ROWS.tsv --format criteo \
  --preset criteo_bars --stages gin --split 0.95,0.05,0 --workdir /tmp/run --data.min_count=1 \
  --train.epochs=1 --train.log_every=100 --train.tensorboard=false --overwrite 2>&1 | tail -4 | tee "$OUT/train_gpu.log"
cp /tmp/run/metrics.jsonl "$OUT/train_gpu_metrics.jsonl" 2>/dev/null
python3 - <<'PY' 2>&1 | tee -a "$OUT/train_gpu.log"
import json
rates = [json.loads(x)["samples_per_s"] for x in open("/tmp/run/metrics.jsonl") if "samples_per_s" in x]
print("python -m train logged samples/s (after the first log):", [round(r) for r in rates[1:]])
PY
