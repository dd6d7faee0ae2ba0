#!/usr/bin/env bash
# Knockout matrix of every finished MoE run of a sweep (runs that already have one are skipped):
#   bash experiments/knockout_sweep.sh SWEEP_DIR SHARDS_DIR [evaluate overrides...]
# e.g. bash experiments/knockout_sweep.sh runs/warm_start/sweep runs/specialisation/shards context=256 stride=256
# With data.split=heldout the held-out split is scored, into <run>/knockout_heldout; with TASK=lm (and
# data.split=heldout) the loss and routing scores of that split, into <run>/eval_heldout.
set -euo pipefail
sweep=$1 shards=$2
shift 2
PY=${PY:-python}
TASK=${TASK:-knockout}
folder=$([ "$TASK" = knockout ] && echo knockout || echo eval)
for a in "$@"; do [ "$a" = data.split=heldout ] && folder=${folder}_heldout; done
shopt -s nullglob
for ckpt in "$sweep"/*/checkpoints/final.ckpt; do
  run=$(dirname "$(dirname "$ckpt")")
  [ "$TASK" = knockout ] && [ ! -d "$run/routing" ] && continue  # a dense run has no routed experts
  [ -f "$run/$folder/eval.json" ] && continue
  $PY -m moe_lm.evaluate ckpt="$ckpt" task="$TASK" data.shards="$shards" "$@" > "$run/$folder.log" 2>&1 \
    || echo "$TASK failed for $run (see $run/$folder.log)"
done
