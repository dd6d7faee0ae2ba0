"""Learning-rate schedules as multipliers of the base LR: linear warmup + cosine, constant, WSD."""

from __future__ import annotations

import math

from moe_lm.config import SchedulerConfig


def lr_multiplier(step: int, cfg: SchedulerConfig, max_steps: int) -> float:
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: stable at 1, then linear decay to min_lr_ratio over the last decay_fraction of training
    decay_start = max_steps - int(cfg.decay_fraction * max_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
