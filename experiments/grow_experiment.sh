#!/usr/bin/env bash
# Growing a trained MoE by one domain expert, measured on moe_small (docs/specialisation.md):
#   [SEED=1] [ROW=rule] bash experiments/grow_experiment.sh [DOMAIN=chat] [OUT=runs/grow]
# 1. base: the forced warm-start arm without DOMAIN (4 routed experts, 500 steps);
# 2. all6: the same arm with all six domains from the start (5 experts), 700 steps = the base's 500 + the growth's 200;
# 3. grown_trainable, grown_frozen: the base grown by DOMAIN's expert, 200 steps (+experiment=add_domain_expert);
# 4. per-domain val loss and the knockout matrix of each on the val split of the shards.
# Needs the specialisation shards (runs/specialisation/shards, prepared from paths.data_root when missing).
set -euo pipefail
DOMAIN=${1:-chat}
OUT=${2:-runs/grow}
PY=${PY:-python}
ROW=${ROW:-rule}  # the new router row of the two grown runs: rule (as measured in docs/specialisation.md) | domain_mean
SEED=${SEED:-1}
SHARDS=runs/specialisation/shards
EXP="+experiment=warm_start_ablation +arm=forced seed=$SEED trainer.progress_bar=false"
if [ ! -f "$SHARDS/web/meta.json" ]; then
  $PY -m moe_lm.tokenizer +experiment=specialisation_ablation tokenizer.out=runs/specialisation/tokenizer
  $PY -m moe_lm.prepare +experiment=specialisation_ablation
fi
expert=$($PY -c "from moe_lm.cli import compose; print(compose(['data=domains']).data.domains['$DOMAIN'].expert)")
[ -f "$OUT/base/result.json" ] || $PY -m moe_lm.train $EXP "~data.domains.$DOMAIN" model.n_routed_experts=4 \
  out_dir="$OUT/base"
[ -f "$OUT/all6/result.json" ] || $PY -m moe_lm.train $EXP trainer.max_steps=700 out_dir="$OUT/all6"
for freeze in false true; do
  name=grown_$([ $freeze = true ] && echo frozen || echo trainable)
  [ -f "$OUT/$name/result.json" ] || $PY -m moe_lm.train +experiment=add_domain_expert seed=$SEED \
    trainer.progress_bar=false init_from=ckpt:"$OUT/base/checkpoints/final.ckpt" grow.domain="$DOMAIN" \
    grow.freeze_old=$freeze grow.router_row="$ROW" out_dir="$OUT/$name"
done
OLD="[$($PY -c "from moe_lm.cli import compose; print(','.join(d for d in compose(['data=domains']).data.domains if d != '$DOMAIN'))")]"
SCORE="data.shards=$SHARDS context=256 stride=256 data.max_tokens=8192 batch_size=16"
# the base model knows the old domains only (its routing scores would name an expert it lacks): scored on those
[ -f "$OUT/base/eval/eval.json" ] || $PY -m moe_lm.evaluate ckpt="$OUT/base/checkpoints/final.ckpt" $SCORE \
  "data.domains=$OLD" out="$OUT/base/eval"
for run in all6 grown_trainable grown_frozen; do
  ckpt=$OUT/$run/checkpoints/final.ckpt
  [ -f "$OUT/$run/eval/eval.json" ] || $PY -m moe_lm.evaluate ckpt="$ckpt" $SCORE out="$OUT/$run/eval"
  [ -f "$OUT/$run/knockout/eval.json" ] || $PY -m moe_lm.evaluate ckpt="$ckpt" task=knockout $SCORE \
    out="$OUT/$run/knockout"
done
echo "expert of $DOMAIN: $expert"
