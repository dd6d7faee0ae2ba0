#!/usr/bin/env bash
# Knockout matrix of every finished MoE run of a sweep (runs that already have one are skipped):
#   bash experiments/knockout_sweep.sh SWEEP_DIR SHARDS_DIR [evaluate overrides...]
# e.g. bash experiments/knockout_sweep.sh runs/warm_start/sweep runs/specialisation/shards context=256 stride=256
set -euo pipefail
sweep=$1 shards=$2
shift 2
PY=${PY:-python}
for ckpt in "$sweep"/*/checkpoints/final.ckpt; do
  run=$(dirname "$(dirname "$ckpt")")
  [ -d "$run/routing" ] || continue  # a dense run has no routed experts
  [ -f "$run/knockout/eval.json" ] && continue
  $PY -m moe_lm.evaluate ckpt="$ckpt" task=knockout data.shards="$shards" "$@" > "$run/knockout.log" 2>&1 \
    || echo "knockout failed for $run (see $run/knockout.log)"
done
