"""Throughput, MFU and routing statistics."""

from __future__ import annotations

from typing import Optional

import torch

# Dense bf16/fp16 tensor-core peak FLOP/s per device (no sparsity), from vendor data sheets.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
    "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}
# Nominal peak for a CPU host; set trainer.peak_flops for your machine.
CPU_PEAK_FLOPS = 1e12


def device_peak_flops(device: torch.device, override: Optional[float] = None) -> float:
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops
        return 312e12
    return CPU_PEAK_FLOPS


def routing_stats(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """counts: (L, E) token slots per expert per MoE layer.

    load fraction per layer and expert; coefficient of variation of the load (std/mean, averaged over
    layers); max violation (max_e load - mean) / mean, averaged over layers; dead experts (no tokens).
    """
    c = counts.float()
    mean = c.mean(-1, keepdim=True).clamp_min(1e-9)  # (L, 1)
    return {
        "load": c / c.sum(-1, keepdim=True).clamp_min(1e-9),  # (L, E)
        "load_cv": (c.std(-1, unbiased=False) / mean.squeeze(-1)).mean(),
        "max_violation": ((c.max(-1).values - mean.squeeze(-1)) / mean.squeeze(-1)).mean(),
        "dead_experts": (c == 0).sum(),
    }
