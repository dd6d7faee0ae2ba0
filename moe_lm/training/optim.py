"""AdamW with decay / no-decay / router parameter groups, and the LR schedule stepped per optimizer step.

On resume, the config's optimizer and schedule settings apply (`apply_current_settings`): a new lr, weight decay,
betas or schedule horizon is written into the checkpoint's optimizer and scheduler state before it loads, instead
of being recorded in the run's config but silently replaced by the saved values.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from moe_lm.config import OptimizerConfig, TrainConfig
from moe_lm.training.schedule import lr_multiplier


def param_groups(model: nn.Module, o: OptimizerConfig) -> list[dict]:
    """Matrices decay; vectors (norms, biases) and learned_gelu's per-channel scale and shift (also when stacked
    per expert) do not; the router gets `router_lr_mult` x the LR and no decay."""
    decay, no_decay, router = [], [], []
    for name, p in model.named_parameters():
        if ".mlp.gate.weight" in name:
            router.append(p)
        elif p.dim() < 2 or name.endswith((".act_scale", ".act_shift")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay, "lr": o.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": o.lr},
        {"params": router, "weight_decay": 0.0, "lr": o.lr * o.router_lr_mult},
    ]
    return [g for g in groups if g["params"]]


def configure_optimizers(model: nn.Module, cfg: TrainConfig) -> dict:
    """What `LightningModule.configure_optimizers` returns: AdamW and a per-step LambdaLR."""
    o = cfg.optimizer
    fused = o.fused and cfg.precision.resolved != "fp16"  # fp16's grad scaler must unscale before clipping
    opt = torch.optim.AdamW(param_groups(model, o), lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused or None)
    # max_steps from config, never trainer.estimated_stepping_batches (it resets dataloader state).
    max_steps, sched_cfg = cfg.trainer.max_steps, cfg.scheduler
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(step, sched_cfg, max_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}



def apply_current_settings(checkpoint: dict, model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Rewrite the checkpoint's optimizer param groups and LR-scheduler base LRs with this config's values, the LR
    at the resumed step from this config's schedule. Returns the settings that changed, as readable lines."""
    saved = checkpoint.get("moe_lm_config", {})
    changes = [f"{group}.{k}: {saved[group][k]!r} -> {v!r}" for group, now in
               (("optimizer", dataclasses.asdict(cfg.optimizer)), ("scheduler", dataclasses.asdict(cfg.scheduler)))
               for k, v in now.items() if group in saved and saved[group].get(k, v) != v]
    old_max = saved.get("trainer", {}).get("max_steps", cfg.trainer.max_steps)
    if old_max != cfg.trainer.max_steps:
        changes.append(f"trainer.max_steps (schedule horizon): {old_max} -> {cfg.trainer.max_steps}")
    if not changes or not checkpoint.get("optimizer_states"):
        return changes
    o = cfg.optimizer
    fresh = param_groups(model, o)
    step = checkpoint["lr_schedulers"][0]["last_epoch"] if checkpoint.get("lr_schedulers") else 0
    mult = lr_multiplier(step, cfg.scheduler, cfg.trainer.max_steps)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    if len(groups) != len(fresh):
        raise ValueError(f"checkpoint has {len(groups)} optimizer param groups, this model {len(fresh)}")
    for g, f in zip(groups, fresh):
        g.update(weight_decay=f["weight_decay"], betas=tuple(o.betas), eps=o.eps, initial_lr=f["lr"], lr=f["lr"] * mult)
    if checkpoint.get("lr_schedulers"):
        checkpoint["lr_schedulers"][0]["base_lrs"] = [f["lr"] for f in fresh]
        checkpoint["lr_schedulers"][0]["_last_lr"] = [f["lr"] * mult for f in fresh]
    return changes
