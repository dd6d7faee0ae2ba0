#!/usr/bin/env bash
# Every GPU measurement the project asks for, in steps a lent GPU can run at once (its time is short):
#   OUT=/some/dir bash experiments/cuda_checks.sh [STEP ...]
# With no step names it runs the sync check and the training-speed grid (call 1, about 8 minutes on an H100):
#   env sync grid32 grid16 grid8
# and then, named (call 2, about 8 minutes at the measured 150k tokens/s):
#   data recipe evaluate knockout
# A lent GPU's 15 minutes hold one such call: the two together (about 17 minutes) do not fit one call of 9 minutes
# at the measured speed; the recipe alone would fit beside the grid once the step runs ~2.5x faster (the 25% MFU
# goal).
# recipe_h100 (1,800 steps of 32 x 1024 = 59M tokens) on ../shared/data (DATA_ROOT), prepared on the device; without
# it, shards and tokenizer prepared here and carried under data/local/ (`bash experiments/cuda_checks.sh data` on the
# CPU writes them in 13 s). Older checks, run by name only: step_tests decode_tests moe_block train_step train_chunks demo
# generate flash memory dispatch precision_tests.
# Each step has its own time limit, so a slow one cannot starve the rest; everything is logged to $OUT/log.txt and
# each benchmark writes its JSON beside it; `python experiments/cuda_results.py $OUT` turns them into the docs'
# tables and measured_throughput.json's rows. Needs a CUDA GPU (data runs anywhere) and the project importable.
set -u
OUT=${OUT:-runs/cuda_checks}
mkdir -p "$OUT"
PY=${PY:-python3}
DATA_ROOT=${DATA_ROOT:-../shared/data}
LOCAL=data/local  # the tokenizer and shards of DATA_ROOT
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
log() { echo "=== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
DEFAULT=" env sync grid32 grid16 grid8 "
STEPS=" $* "
[[ "$STEPS" == "  " ]] && STEPS=$DEFAULT
step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2; shift 2
    [[ "$STEPS" == *" $name "* ]] || return 0
    log "$name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
    local rc=${PIPESTATUS[0]}
    log "$name: exit $rc after $((SECONDS - t0)) s"
    return "$rc"
}
GRID="$PY experiments/bench_train_step.py --device cuda --seq 1024 --reps 5 --warmup 2"

step 30 env bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c '
import torch, torch.nn.functional as F, lightning, transformers
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"lightning\", lightning.__version__,
      \"transformers\", transformers.__version__)
print(\"capability\", torch.cuda.get_device_capability(), \"F.grouped_mm\", hasattr(F, \"grouped_mm\"),
      \"torch._grouped_mm\", hasattr(torch, \"_grouped_mm\"))'"
# which dispatch paths' training step makes no host-device sync (torch.cuda.set_sync_debug_mode("error"))
step 60 sync $PY experiments/cuda_sync_check.py --batch 8 --seq 1024
# the CPU proofs, on the device's torch (by name only: they run on the CPU)
step 60 step_tests $PY -m pytest -q -p no:cacheprovider tests/model/test_train_step_graph.py \
    tests/training/test_step_sync.py tests/model/test_moe_dispatch.py -m "not slow"
# compiled moe_100m per dispatch path, eager / compiled / CUDA graphs, beside the dense twin: tokens/s, MFU, peak
# memory; the recipe's micro-batch first (recipe_h100: 32 x 1024), then 16 (recipe_a100) and 8 (recipe_t4)
step 300 grid32 $GRID --batch 32 --grid grouped_mm,capacity@1.25 --modes eager,default,reduce-overhead \
    --json "$OUT/grid32.json"
step 100 grid16 $GRID --batch 16 --grid grouped_mm,capacity --modes default --json "$OUT/grid16.json"
step 100 grid8 $GRID --batch 8 --grid grouped_mm,capacity --modes default --json "$OUT/grid8.json"
# recipe_h100 to its end on the local data, then each domain's held-out loss and routing, and the knockout matrix
data() {
    if [[ -d "$DATA_ROOT" ]]; then
        $PY -m moe_lm.tokenizer data=domains data.source=local paths.data_root="$DATA_ROOT" tokenizer.out=$LOCAL/tokenizer &&
        $PY -m moe_lm.prepare data=domains data.source=local paths.data_root="$DATA_ROOT" \
            prepare.tokenizer=$LOCAL/tokenizer/tokenizer.json prepare.out=$LOCAL/shards
    else
        echo "$DATA_ROOT not found: using the carried $LOCAL"; ls $LOCAL/shards
    fi
}
export PY DATA_ROOT LOCAL
export -f data
step 120 data bash -c data
RUN=$OUT/recipe_h100
step 480 recipe $PY -m moe_lm.train +experiment=recipe_h100 data.source=local data.shards=$LOCAL/shards \
    prepare.tokenizer=$LOCAL/tokenizer/tokenizer.json out_dir=$RUN checkpoint.dir=/tmp/recipe_h100_ckpt \
    checkpoint.every_minutes=0 trainer.progress_bar=false
# a recipe stopped at its time limit (SIGTERM: last.ckpt saved after the current step) is scored where it stopped
CKPT=/tmp/recipe_h100_ckpt/final.ckpt
[[ -f $CKPT ]] || CKPT=/tmp/recipe_h100_ckpt/last.ckpt
step 60 evaluate $PY -m moe_lm.evaluate ckpt=$CKPT data.shards=$LOCAL/shards out=$RUN/eval
step 90 knockout $PY -m moe_lm.evaluate ckpt=$CKPT task=knockout data.shards=$LOCAL/shards out=$RUN/knockout
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
[[ -d $RUN ]] && ls -R $RUN | head -40 | tee -a "$OUT/log.txt"
log done
