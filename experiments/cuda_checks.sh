#!/usr/bin/env bash
# The CUDA checks of docs/performance.md's "On a GPU" section, in one pass (a lent GPU's time is short):
#   OUT=/some/dir bash experiments/cuda_checks.sh [STEP ...]
# With step names (env tests decode_tests moe_block train_step train_chunks demo generate flash memory recipes
# dispatch precision_tests), only those
# run, in this file's order; with none, all of them.
# Each step has its own time limit, so a slow one cannot starve the rest; everything is logged to $OUT/log.txt
# and each benchmark writes its JSON beside it. Needs a CUDA GPU and the project's dependencies importable.
set -u
OUT=${OUT:-runs/cuda_checks}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
log() { echo "=== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
STEPS=" $* "
step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2; shift 2
    [[ "$STEPS" == "  " || "$STEPS" == *" $name "* ]] || return 0
    log "$name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
    local rc=${PIPESTATUS[0]}
    log "$name: exit $rc after $((SECONDS - t0)) s"
    return "$rc"
}

step 30 env bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c '
import torch, torch.nn.functional as F, lightning, transformers
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"lightning\", lightning.__version__,
      \"transformers\", transformers.__version__)
print(\"capability\", torch.cuda.get_device_capability(), \"F.grouped_mm\", hasattr(F, \"grouped_mm\"),
      \"torch._grouped_mm\", hasattr(torch, \"_grouped_mm\"))'"
# grouped_mm on the device equals the loop; dynamo finds no graph break; HF reference logits on CPU as a sanity check
step 150 tests $PY -m pytest -q -p no:cacheprovider tests/model/test_moe_dispatch.py tests/model/test_compile.py \
    tests/model/test_hf_reference.py
# the compiled one-token step as a CUDA graph gives the eager tokens
step 90 decode_tests $PY -m pytest -q -p no:cacheprovider tests/inference/test_decode.py -k "cuda or compiled" -m "not slow"
step 60 moe_block $PY experiments/bench_moe_block.py --device cuda --tokens 16384 --reps 10 --json "$OUT/moe_block.json"
step 150 train_step $PY experiments/bench_train_step.py --device cuda --batch 8 --seq 1024 --compile \
    --json "$OUT/train_step.json"
# the eager step with the cross-entropy in chunks: what trainer.ce_chunk_size costs or saves on a GPU
step 90 train_chunks $PY experiments/bench_train_step.py --device cuda --batch 8 --seq 1024 --chunked 256,1024 \
    --json "$OUT/train_chunks.json"
step 150 demo $PY -m moe_lm.train +experiment=overfit_100_lines out_dir=/tmp/cuda_demo trainer.progress_bar=false
step 200 generate $PY experiments/bench_generate.py --device cuda --new 256 --warmup 1 --json "$OUT/generate.json"
step 40 flash $PY experiments/cuda_attention_check.py
step 45 memory $PY experiments/bench_memory.py --device cuda --json "$OUT/memory.json"
# the recipes' micro-batches (recipe_h100 32, recipe_a100 16, recipe_t4 8 x 1024 in fp16 with the grad scaler),
# eager and compiled: tokens/s, MFU, peak memory, MoE / dense (moe_lm/eval/recipe_plan.py's measured table)
step 200 recipes bash -c "$PY experiments/bench_train_step.py --device cuda --batch 32 --seq 1024 --compile \
    --json $OUT/recipe_h100.json && $PY experiments/bench_train_step.py --device cuda --batch 16 --seq 1024 \
    --compile --json $OUT/recipe_a100.json && $PY experiments/bench_train_step.py --device cuda --batch 8 --seq 1024 \
    --fp16 --json $OUT/recipe_t4_fp16.json"
# every dispatch path of the MoE block in bf16 and fp32 (model.moe_impl=auto's table per compute capability)
step 90 dispatch bash -c "$PY experiments/bench_moe_block.py --device cuda --tokens 16384 --reps 10 \
    --json $OUT/dispatch_bf16.json"
# fp16 on the GPU: router in fp32, the scaler's skipped step leaves the router biases alone, auto precision
step 60 precision_tests $PY -m pytest -q -p no:cacheprovider tests/training/test_precision.py
[[ -d /tmp/cuda_demo ]] && ls /tmp/cuda_demo | tee -a "$OUT/log.txt"
log done
