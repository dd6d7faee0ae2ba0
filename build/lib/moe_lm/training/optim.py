"""AdamW with decay / no-decay / router parameter groups, and the LR schedule stepped per optimizer step."""

from __future__ import annotations

import torch
from torch import nn

from moe_lm.config import OptimizerConfig, TrainConfig
from moe_lm.training.schedule import lr_multiplier


def param_groups(model: nn.Module, o: OptimizerConfig) -> list[dict]:
    """Matrices decay; vectors (norms, biases) do not; the router gets `router_lr_mult` x the LR and no decay."""
    decay, no_decay, router = [], [], []
    for name, p in model.named_parameters():
        if ".mlp.gate.weight" in name:
            router.append(p)
        elif p.dim() < 2:
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
