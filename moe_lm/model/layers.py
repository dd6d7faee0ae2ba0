"""Small building blocks: RMSNorm, rotary position embedding, the feed-forward network (gated or not).

Shape legend: B batch, T time, H heads, D model width, R rope dim, I intermediate width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, returned in the input dtype (as DeepSeek / Llama)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for `positions` (any shape P...), each (P..., dim/2), in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float()[..., None] * inv_freq  # (P..., R/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3), ... of the last dim (DeepSeek's layout).

    x: (B, H, T, R); cos/sin: (B, 1, T, R/2) or (T, R/2). Computed in fp32, returned in x's dtype.
    """
    x32 = x.float().unflatten(-1, (-1, 2))  # (B, H, T, R/2, 2)
    x_even, x_odd = x32[..., 0], x32[..., 1]
    out = torch.stack((x_even * cos - x_odd * sin, x_odd * cos + x_even * sin), dim=-1)
    return out.flatten(-2).to(x.dtype)


def is_gated(activation: str) -> bool:
    """swiglu and geglu multiply the activated gate projection by an up projection; gelu and learned_gelu have none."""
    return activation in ("swiglu", "geglu")


def activation_fn(activation: str):
    """The nonlinearity of model.activation: silu for swiglu, gelu (erf) for the rest."""
    if activation not in ("swiglu", "geglu", "gelu", "learned_gelu"):
        raise ValueError(f"unknown activation {activation!r}")
    return F.silu if activation == "swiglu" else F.gelu


class FeedForward(nn.Module):
    """Gated (swiglu, geglu): act(x W_gate) * (x W_up) W_down. Plain (gelu): gelu(x W_up) W_down.
    learned_gelu: gelu(a * (x W_up) + b) W_down with a per-channel scale a (init 1) and shift b (init 0)."""

    def __init__(self, d_model: int, intermediate_size: int, activation: str = "swiglu") -> None:
        super().__init__()
        self.gated = is_gated(activation)
        if self.gated:
            self.gate_proj = nn.Linear(d_model, intermediate_size, bias=False)
        self.up_proj = nn.Linear(d_model, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, d_model, bias=False)
        self.act = activation_fn(activation)
        self.act_scale = self.act_shift = None
        if activation == "learned_gelu":
            self.act_scale = nn.Parameter(torch.ones(intermediate_size))  # (I,)
            self.act_shift = nn.Parameter(torch.zeros(intermediate_size))  # (I,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        h = self.up_proj(x)  # (..., I)
        if self.act_scale is not None:
            h = h * self.act_scale.to(h.dtype) + self.act_shift.to(h.dtype)
        return self.down_proj(self.act(h))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in here: autocast's where it is on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
