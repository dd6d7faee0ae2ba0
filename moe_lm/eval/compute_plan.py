"""What a compute budget buys (the library behind `python -m moe_lm.plan`).

The budget C (FLOPs) is `flops`, or peak FLOP/s x MFU x hours, with the MFU given (`mfu=`) or the one measured on
the device for the model family's compiled step, or on a device never measured a range derived from the measured
ones (moe_lm/eval/throughput.py): the budget is then a range, the compute-optimal size is taken at its geometric
middle, and the hours are ranges. Compute-optimal training spends it on N
active parameters and D = r * N tokens (r = `tokens_per_param`, ~20 in Chinchilla), with C = 6 * N * D, so
N_opt = sqrt(C / (6 r)). Around that point the planner lists a ladder of models of the configured family
(width and depth scaled together, heads of the same size, every width-dependent size in proportion; counted
exactly on the meta device) with, per size: active and total parameters, its compute-optimal tokens, the
training FLOPs for them (matmuls and attention at `seq_len`) and the wall time they take on the device, and
the training memory at `batch_size` x `seq_len`.

Memory: fp32 weights, fp32 gradients and AdamW's two moments, 16 bytes per parameter (bf16-mixed keeps fp32
weights), plus activations per layer of about T * B * d * (34 + 5 * heads * T / d) bytes (Korthikanti et al.
2022, "Reducing activation recomputation in large transformer models", no recomputation), or 2 * T * B * d
bytes per layer with gradient checkpointing. An estimate: it leaves out the MoE dispatch buffers, the logits
(B * T * vocab * 4 bytes, listed apart) and allocator slack.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from moe_lm.config import ConfigError, ModelConfig, PlanConfig
from moe_lm.model.counting import (CPU_PEAK_FLOPS, DEVICE_MEMORY_GIB, PEAK_FLOPS, param_breakdown,
                                   train_flops_per_token)

WIDTHS = (128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 4096)


def device_flops_per_s(cfg: PlanConfig) -> float:
    if cfg.flops_per_s:
        return cfg.flops_per_s
    if cfg.gpu == "cpu":
        return CPU_PEAK_FLOPS
    if cfg.gpu not in PEAK_FLOPS:
        raise ConfigError(f"gpu: unknown device {cfg.gpu!r}; one of {sorted(PEAK_FLOPS)} or cpu "
                          f"(or give its peak as flops_per_s=...)")
    return PEAK_FLOPS[cfg.gpu]


def device_mfu(cfg: PlanConfig) -> tuple[tuple[float, float], str]:
    """((low, high) MFU, where it comes from): as given, measured, or derived from the measured devices."""
    if cfg.mfu:
        return (cfg.mfu, cfg.mfu), "as given (mfu=)"
    import torch

    from moe_lm.eval.throughput import speed
    from moe_lm.model.transformer import MoETransformer

    with torch.device("meta"):
        parts = param_breakdown(MoETransformer(cfg.model), cfg.model)
    try:
        s = speed(cfg.gpu, cfg.model.name, train_flops_per_token(cfg.model, parts, cfg.seq_len), cfg.batch_size, True)
    except KeyError as e:
        raise ConfigError(f"mfu: {e.args[0]}; give one as mfu=...") from None
    return s.mfu, s.basis


def budget(cfg: PlanConfig) -> tuple[tuple[float, float], float, tuple[float, float], str]:
    """((low, high) budget FLOPs, device peak FLOP/s, (low, high) MFU, where the MFU comes from)."""
    peak = device_flops_per_s(cfg)
    if cfg.flops:
        return (cfg.flops, cfg.flops), peak, (1.0, 1.0), ""
    mfu, basis = device_mfu(cfg)
    return tuple(peak * m * cfg.hours * 3600 for m in mfu), peak, mfu, basis


def _round(x: float, to: int) -> int:
    return max(to, int(round(x / to)) * to)


def scaled_model(base: ModelConfig, d_model: int) -> ModelConfig:
    """The base model's shape at another width: depth in proportion (the same width/depth ratio), heads of the
    same size, intermediate sizes and latent ranks in proportion."""
    r = d_model / base.d_model
    n_heads = max(1, round(base.n_heads * r))
    kv = max(1, min(n_heads, round(base.n_kv_heads * r)))
    while n_heads % kv:
        kv -= 1
    return dataclasses.replace(
        base, name=f"{base.name}@d{d_model}", d_model=d_model, n_heads=n_heads, n_kv_heads=kv,
        n_layers=max(2, round(base.n_layers * r)), moe_intermediate_size=_round(base.moe_intermediate_size * r, 32),
        dense_intermediate_size=_round(base.dense_intermediate_size * r, 64),
        kv_lora_rank=_round(base.kv_lora_rank * r, 32),
        q_lora_rank=None if base.q_lora_rank is None else _round(base.q_lora_rank * r, 32),
        first_k_dense=min(base.first_k_dense, max(2, round(base.n_layers * r)) - 1))


def memory_gib(cfg: ModelConfig, total_params: int, batch: int, seq: int, recompute: bool) -> tuple[float, float]:
    """(weights + gradients + AdamW states + activations, logits) in GiB."""
    per_layer = seq * batch * cfg.d_model * (2 if recompute else 34 + 5 * cfg.n_heads * seq / cfg.d_model)
    states = 16 * total_params
    logits = 4 * batch * seq * cfg.vocab_size
    return (states + cfg.n_layers * per_layer) / 2 ** 30, logits / 2 ** 30


def ladder_row(cfg: PlanConfig, model: ModelConfig, peak: float, mfu: tuple[float, float]) -> dict[str, Any]:
    import torch

    from moe_lm.model.transformer import MoETransformer

    with torch.device("meta"):
        parts = param_breakdown(MoETransformer(model), model)
    active, total = parts["active_per_token"], parts["total"]
    tokens = cfg.tokens_per_param * active
    flops = train_flops_per_token(model, parts, cfg.seq_len) * tokens
    mem, logits = memory_gib(model, total, cfg.batch_size, cfg.seq_len, cfg.gradient_checkpointing)
    return {"d_model": model.d_model, "n_layers": model.n_layers, "n_heads": model.n_heads, "active": active,
            "total": total, "tokens": tokens, "flops": flops, "hours": (flops / (peak * mfu[1]) / 3600,
                                                                        flops / (peak * mfu[0]) / 3600),
            "memory_gib": mem, "logits_gib": logits}


def plan(cfg: PlanConfig) -> dict[str, Any]:
    """The budget, the compute-optimal size and tokens, and the ladder of sizes around it."""
    (c_lo, c_hi), peak, mfu, basis = budget(cfg)
    c = math.sqrt(c_lo * c_hi)  # the range's geometric middle
    n_opt = math.sqrt(c / (6 * cfg.tokens_per_param))
    rows = []
    for width in WIDTHS:
        try:
            rows.append(ladder_row(cfg, scaled_model(cfg.model, width), peak, mfu))
        except ConfigError:  # a width the family's divisibility rules do not allow
            continue
    best = min(range(len(rows)), key=lambda i: abs(math.log(rows[i]["active"] / n_opt)))
    shown = rows[max(0, best - 3): best + 4]
    # the optimum outside the ladder's sizes by more than a factor 2: the marked row is the nearest rung, not it
    off = ("below" if n_opt < rows[0]["active"] / 2 else "above" if n_opt > rows[-1]["active"] * 2 else None)
    return {"budget_flops": (c_lo, c_hi), "peak_flops_per_s": peak, "mfu": mfu, "mfu_basis": basis, "n_opt": n_opt,
            "d_opt": cfg.tokens_per_param * n_opt, "best_d_model": rows[best]["d_model"], "rows": shown,
            "device_memory_gib": DEVICE_MEMORY_GIB.get(cfg.gpu), "off_ladder": off,
            "ladder_range": (rows[0]["active"], rows[-1]["active"])}


def _si(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def plan_table(cfg: PlanConfig, p: dict[str, Any]) -> str:
    from moe_lm.eval.throughput import span

    device = cfg.gpu if not cfg.flops else "the budget"
    lines = [f"budget: {span(*p['budget_flops'], '{:.3g}')} FLOPs ({cfg.gpu}: {p['peak_flops_per_s']:.3g} FLOP/s peak x "
             f"MFU {span(*p['mfu'], '{:.1%}')} x {cfg.hours:g} h; MFU {p['mfu_basis']})" if not cfg.flops else
             f"budget: {p['budget_flops'][0]:.3g} FLOPs",
             f"compute-optimal at {cfg.tokens_per_param:g} tokens/param: {_si(p['n_opt'])} active parameters "
             f"trained on {_si(p['d_opt'])} tokens (C = 6 N D)", "",
             f"| d_model | layers | heads | active params | total params | tokens ({cfg.tokens_per_param:g}/param) "
             f"| train FLOPs | hours on {device} | memory (GiB, {cfg.batch_size} x {cfg.seq_len}) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if p.get("off_ladder"):
        lo, hi = p["ladder_range"]
        lines[1:1] = [f"warning: the compute-optimal size is {p['off_ladder']} the ladder of this model family "
                      f"({_si(lo)}-{_si(hi)} active parameters): the marked row is only its nearest rung, and "
                      f"nothing below describes this budget"]
    limit = p["device_memory_gib"]
    for r in p["rows"]:
        mark = " **<-**" if r["d_model"] == p["best_d_model"] else ""
        over = f" (> {limit} GiB)" if limit and r["memory_gib"] + r["logits_gib"] > limit else ""
        lines.append(f"| {r['d_model']}{mark} | {r['n_layers']} | {r['n_heads']} | {_si(r['active'])} | "
                     f"{_si(r['total'])} | {_si(r['tokens'])} | {r['flops']:.2e} | {span(*r['hours'], '{:.3g}')} | "
                     f"{r['memory_gib']:.1f} + {r['logits_gib']:.1f} logits{over} |")
    lines += ["", "**<-**: the size nearest the compute-optimal active parameters. Hours: the size's compute-optimal "
              "tokens at this MFU (a range where the MFU is); memory: fp32 weights + grads + AdamW + activations (estimate, see "
              "moe_lm/eval/compute_plan.py) + fp32 logits (trainer.ce_chunk_size=N keeps only N tokens' logits at "
              "a time)."]
    return "\n".join(lines)
