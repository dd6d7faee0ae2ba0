"""What a training recipe (a `conf/experiment/recipe_*.yaml`) costs: `python -m moe_lm.plan recipe=NAME`.

Tokens per domain and in all (the train split: prepare.val_fraction is held out), tokens per optimizer step
(micro-batch x seq_len x accumulation), steps and passes over the data, the training memory estimate of the
micro-batch (moe_lm/eval/compute_plan.py's formula) against each GPU's memory, and the hours per GPU from the
tokens/s measured on that GPU, or a range derived from the GPUs that were measured (moe_lm/eval/throughput.py),
labelled as such.
"""

from __future__ import annotations

from typing import Any

from moe_lm.config import TrainConfig
from moe_lm.eval.compute_plan import memory_gib
from moe_lm.eval.throughput import span, speed
from moe_lm.model.counting import DEVICE_MEMORY_GIB, param_breakdown, train_flops_per_token

RECIPE_GPUS = ("T4", "A100", "H100")
USABLE_FRACTION = 0.9  # of a GPU's memory: the CUDA context, the allocator's slack (a T4's 16 GB: 14.5 GiB)


def recipe_plan(cfg: TrainConfig) -> dict[str, Any]:
    import torch

    from moe_lm.model.transformer import MoETransformer

    d, t = cfg.data, cfg.trainer
    budgets = {name: dom.token_budget for name, dom in d.domains.items()}
    train_tokens = sum(budgets.values()) * (1 - cfg.prepare.val_fraction)
    per_step = d.batch_size * d.seq_len * t.accumulate_grad_batches
    with torch.device("meta"):
        parts = param_breakdown(MoETransformer(cfg.model), cfg.model)
    per_token = train_flops_per_token(cfg.model, parts, d.seq_len)
    mem, logits = memory_gib(cfg.model, parts["total"], d.batch_size, d.seq_len, t.gradient_checkpointing)
    if t.ce_chunk_size:
        logits *= t.ce_chunk_size / (d.batch_size * d.seq_len)
    gpus = {}
    for gpu in RECIPE_GPUS:
        s = speed(gpu, cfg.model.name, per_token, d.batch_size, t.compile)
        gpus[gpu] = {"memory_limit_gib": DEVICE_MEMORY_GIB[gpu] * USABLE_FRACTION,
                     "hours": tuple(per_step * t.max_steps / tps / 3600 for tps in reversed(s.tokens_per_s)),
                     "tokens_per_s": s.tokens_per_s, "mfu": s.mfu, "speed": s.label, "basis": s.basis}
    return {"budgets": budgets, "train_tokens": train_tokens, "tokens_per_step": per_step, "steps": t.max_steps,
            "tokens": per_step * t.max_steps, "passes": per_step * t.max_steps / train_tokens, "memory_gib": mem,
            "logits_gib": logits, "precision": cfg.precision.name, "compile": t.compile, "gpus": gpus,
            "model": cfg.model.name, "active": parts["active_per_token"], "total": parts["total"]}


def recipe_table(name: str, p: dict[str, Any]) -> str:
    per = ", ".join(f"{k} {v / 1e6:g}M" for k, v in p["budgets"].items())
    need = p["memory_gib"] + p["logits_gib"]
    lines = [f"recipe {name}: {p['model']} ({p['active'] / 1e6:.1f}M active of {p['total'] / 1e6:.1f}M), "
             f"{p['precision']}, compile {'on' if p['compile'] else 'off'}",
             f"tokens per domain: {per}; train split {p['train_tokens'] / 1e6:.1f}M",
             f"{p['steps']:,} steps of {p['tokens_per_step']:,} tokens = {p['tokens'] / 1e6:.1f}M tokens, "
             f"{p['passes']:.2f} passes over the data",
             f"training memory (estimate): {p['memory_gib']:.1f} GiB + {p['logits_gib']:.1f} GiB logits", "",
             "| GPU | fits (usable GiB) | tokens/s | MFU | hours | speed |", "|---|---|---:|---:|---:|---|"]
    for gpu, g in p["gpus"].items():
        fits = f"{'yes' if need <= g['memory_limit_gib'] else 'NO'} ({g['memory_limit_gib']:.1f})"
        lines.append(f"| {gpu} | {fits} | {span(*g['tokens_per_s'], '{:,.0f}')} | {span(*g['mfu'], '{:.1%}')} | "
                     f"{span(*g['hours'])} | {g['speed']} |")
    lines += [""] + [f"{gpu}: {g['basis']}" for gpu, g in p["gpus"].items()]
    return "\n".join(lines)
