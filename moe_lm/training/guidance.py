"""Guided warm start: a router supervision term that pulls each token of an expert domain toward its domain's
expert, weighted by a coefficient annealed to exactly 0 at the end of the warm start.

Shape legend: L MoE layers, B batch, T time, N = B*T tokens, E routed experts, D domains.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from moe_lm.config import RoutingConfig


def guided_coef(cfg: RoutingConfig, step: int, warm_steps: int) -> float:
    """The supervision weight at optimizer step `step` (a pure function of the step: resumes continue it)."""
    if cfg.warm_routing not in ("guided", "forced_guided") or step >= warm_steps:
        return 0.0
    progress = step / warm_steps
    if cfg.guided_anneal == "constant":
        return cfg.guided_coef
    if cfg.guided_anneal == "cosine":
        return cfg.guided_coef * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.guided_coef * (1 - progress)


def forced_experts(domain: torch.Tensor, targets: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, T) the routed expert each token must use under the forced warm start: its domain's, -1 for a domain
    without one. domain (B,) per sample; targets (D,) expert per domain."""
    return targets.to(domain.device)[domain][:, None].expand(-1, seq_len)


def expert_targets(experts: Sequence[Optional[int]]) -> torch.Tensor:
    """(D,) the routed expert of each domain, -1 for a domain without one."""
    return torch.tensor([-1 if e is None else e for e in experts], dtype=torch.long)


def router_supervision_loss(router_logits: torch.Tensor, domain: torch.Tensor, targets: torch.Tensor,
                            token_mask: torch.Tensor) -> torch.Tensor:
    """Mean over MoE layers and the valid tokens of expert domains of -log softmax(router logits)[own expert].

    router_logits (L, N, E); domain (B,) per sample; targets (D,) expert per domain (-1: none); token_mask (B, T).
    Zero when the batch holds no token of an expert domain. No host sync.
    """
    L, N, E = router_logits.shape
    B, T = token_mask.shape
    own = targets.to(domain.device)[domain].repeat_interleave(T)  # (N,) expert of each token's domain
    keep = ((own >= 0) & token_mask.reshape(N)).float()  # (N,)
    logp = F.log_softmax(router_logits.float(), dim=-1)  # (L, N, E)
    nll = -logp.gather(-1, own.clamp_min(0)[None, :, None].expand(L, -1, 1)).squeeze(-1)  # (L, N)
    return (nll * keep).sum() / (L * keep.sum()).clamp_min(1)
