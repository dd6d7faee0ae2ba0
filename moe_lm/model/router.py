"""The router: scores every routed expert, adds the aux-free bias, picks the top-k.

Shape legend: N tokens (B*T), D model width, E routed experts, K top-k.

Names follow HF transformers' DeepseekV3TopkRouter: `weight` (E, D), `e_score_correction_bias` (E).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moe_lm.config import ModelConfig
from moe_lm.model.layers import compute_dtype


@dataclass
class RouterOutput:
    logits: torch.Tensor  # (N, E) fp32
    scores: torch.Tensor  # (N, E) fp32: softmax or sigmoid of the logits
    topk_idx: torch.Tensor  # (N, K)
    topk_weight: torch.Tensor  # (N, K) fp32, normalised if norm_topk_prob


class TopkRouter(nn.Module):
    """Scores every expert; picks K per token. The aux-free bias only affects *which* experts are picked."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k = cfg.top_k
        self.scoring = cfg.scoring
        self.norm_topk_prob = cfg.norm_topk_prob
        self.routed_scaling_factor = cfg.routed_scaling_factor
        self.use_bias = cfg.use_aux_free_bias
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.d_model))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))
        # (E,) bool: experts removed from routing (never chosen), for knockout evaluation and experts.drop
        self.removed_experts: Optional[torch.Tensor] = None
        # a routed expert that always holds one of each token's top-k slots (experts.force); None = none
        self.always_expert: Optional[int] = None

    def forward(self, x: torch.Tensor, forced: Optional[torch.Tensor] = None) -> RouterOutput:
        """x: (N, D). forced: optional (N,) expert that must hold one of each token's top-k slots (-1: none)."""
        # (N, E). Under fp16 autocast the router leaves autocast: fp32 logits, so no overflow in the scores or the
        # balance losses. Under bf16 autocast the matmul runs in bf16 (autocast casts it), as it always has here.
        with torch.autocast(x.device.type, enabled=False) if compute_dtype(x) == torch.float16 else nullcontext():
            logits = F.linear(x.float(), self.weight.float())
        scores = logits.softmax(-1) if self.scoring == "softmax" else logits.sigmoid()
        choice = scores + self.e_score_correction_bias if self.use_bias else scores
        if self.removed_experts is not None:
            choice = choice.masked_fill(self.removed_experts.to(choice.device), float("-inf"))
        if forced is not None:  # the own expert ranks first; the other K-1 slots are the router's choice
            own = (forced[:, None] == torch.arange(choice.shape[-1], device=choice.device))  # (N, E), all False at -1
            choice = choice.masked_fill(own, float("inf"))
        if self.always_expert is not None:
            choice = choice.masked_fill(torch.arange(choice.shape[-1], device=choice.device) == self.always_expert,
                                        float("inf"))
        topk_idx = choice.topk(self.top_k, dim=-1).indices  # (N, K)
        topk_weight = scores.gather(-1, topk_idx)  # (N, K): unbiased scores
        if self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(-1, keepdim=True) + 1e-20)
        return RouterOutput(logits, scores, topk_idx, topk_weight * self.routed_scaling_factor)
