"""Routing statistics: expert loads and the domain x expert matrix (pure functions, used live and offline)."""

from __future__ import annotations

from typing import Optional

import torch


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


def domain_expert_counts(topk_idx: torch.Tensor, domain: torch.Tensor, n_domains: int, n_experts: int,
                         token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Token slots per (MoE layer, domain, expert).

    topk_idx (L, N, K) chosen experts of N = B*T tokens; domain (B,) the domain of each sample; token_mask (B, T)
    False for padding, which counts nowhere. -> (L, D, E) integer counts.
    """
    L, N, K = topk_idx.shape
    B = domain.shape[0]
    dom = domain.repeat_interleave(N // B)  # (N,) domain of each token
    keep = torch.ones(N, dtype=torch.bool, device=topk_idx.device) if token_mask is None else token_mask.reshape(N)
    # one flat bin per (layer, domain, expert); padded slots go to an extra bin that is dropped
    bins = (torch.arange(L, device=topk_idx.device)[:, None, None] * n_domains + dom[None, :, None]) * n_experts + topk_idx
    bins = torch.where(keep[None, :, None], bins, L * n_domains * n_experts)  # (L, N, K)
    counts = torch.bincount(bins.flatten(), minlength=L * n_domains * n_experts + 1)[:-1]
    return counts.view(L, n_domains, n_experts)


def shares(counts: torch.Tensor) -> torch.Tensor:
    """Counts (..., E) -> each row's share per expert (rows without tokens stay 0)."""
    c = counts.float()
    return c / c.sum(-1, keepdim=True).clamp_min(1)
