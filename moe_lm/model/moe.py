"""Mixture-of-Experts feed-forward: router, routed experts, shared experts, balance losses.

Shape legend: N tokens (B*T), D model width, E routed experts, K top-k, I moe_intermediate_size.

Names follow HF transformers' DeepseekV3MoE: `gate.weight` (E, D), `gate.e_score_correction_bias` (E),
`experts.gate_up_proj` (E, 2I, D) with the gate half first, `experts.down_proj` (E, D, I),
`shared_experts.{gate,up,down}_proj` of width n_shared_experts * I.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moe_lm.config import ModelConfig
from moe_lm.model.layers import GatedMLP, activation_fn


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

    def forward(self, x: torch.Tensor) -> RouterOutput:
        logits = F.linear(x.float(), self.weight.float())  # (N, E), fp32 routing
        scores = logits.softmax(-1) if self.scoring == "softmax" else logits.sigmoid()
        choice = scores + self.e_score_correction_bias if self.use_bias else scores
        topk_idx = choice.topk(self.top_k, dim=-1).indices  # (N, K)
        topk_weight = scores.gather(-1, topk_idx)  # (N, K): unbiased scores
        if self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(-1, keepdim=True) + 1e-20)
        return RouterOutput(logits, scores, topk_idx, topk_weight * self.routed_scaling_factor)


class RoutedExperts(nn.Module):
    """E gated MLPs stored as stacked weights; tokens are grouped by expert (no loop over tokens)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, I, D = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.d_model
        self.n_experts = E
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))
        self.down_proj.is_residual_proj = True
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                counts: Optional[torch.Tensor] = None) -> torch.Tensor:
        N, K = topk_idx.shape
        flat_expert = topk_idx.reshape(-1)  # (N*K,)
        if counts is None:
            counts = torch.bincount(flat_expert, minlength=self.n_experts)
        order = flat_expert.argsort(stable=True)  # slots sorted by expert
        token_of_slot = order // K  # (N*K,): which token each sorted slot belongs to
        x_sorted = x[token_of_slot]  # (N*K, D), grouped by expert
        # unbind once: indexing the stacked weights per expert would zero-fill a full (E, ...) grad each time
        w_gate_up, w_down = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        outs = []
        for e, x_e in enumerate(x_sorted.split(counts.tolist())):  # loop over E experts, not tokens
            gate, up = F.linear(x_e, w_gate_up[e]).chunk(2, dim=-1)  # (n_e, I) each
            outs.append(F.linear(self.act(gate) * up, w_down[e]))  # (n_e, D)
        y_sorted = torch.cat(outs) * topk_weight.reshape(-1)[order, None].to(x.dtype)  # (N*K, D)
        return torch.zeros_like(x).index_add_(0, token_of_slot, y_sorted)  # (N, D)


@dataclass
class MoEStats:
    aux_loss: torch.Tensor  # scalar fp32, switch/GShard balance loss (1.0 when balanced)
    z_loss: torch.Tensor  # scalar fp32, mean squared router logsumexp
    expert_counts: torch.Tensor  # (E,) token slots routed to each expert (masked tokens not counted)
    topk_idx: torch.Tensor  # (N, K) detached, for routing statistics (every token, masked or not)
    topk_weight: torch.Tensor  # (N, K) detached
    router_entropy: torch.Tensor  # scalar: mean entropy (nats) of each token's normalised expert scores
    router_logits: Optional[torch.Tensor] = None  # (N, E) fp32, with gradient in training (router supervision)


def load_balance_loss(scores: torch.Tensor, counts: torch.Tensor, top_k: int, scoring: str,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Switch/GShard loss E * sum_i f_i * P_i over all N tokens of the batch (not per sequence).

    f_i = counts_i / (N*K) is the fraction of token slots sent to expert i (no gradient);
    P_i is the mean routing probability of expert i (sigmoid scores are normalised per token).
    mask: optional (N,) float, 1 for the tokens that count (padding excluded); counts must match it.
    """
    probs = scores if scoring == "softmax" else scores / scores.sum(-1, keepdim=True)
    n_experts = scores.shape[-1]
    n_tokens = scores.shape[0] if mask is None else mask.sum().clamp_min(1)
    f = counts.float() / (n_tokens * top_k)
    p_mean = probs.float().mean(0) if mask is None else (probs.float() * mask[:, None]).sum(0) / n_tokens
    return n_experts * (f * p_mean).sum()


def router_z_loss(logits: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    z2 = torch.logsumexp(logits.float(), dim=-1).pow(2)  # (N,)
    return z2.mean() if mask is None else (z2 * mask).sum() / mask.sum().clamp_min(1)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = TopkRouter(cfg)
        self.experts = RoutedExperts(cfg)
        self.shared_experts: Optional[GatedMLP] = None
        if cfg.n_shared_experts > 0:
            self.shared_experts = GatedMLP(cfg.d_model, cfg.n_shared_experts * cfg.moe_intermediate_size,
                                           cfg.activation)
            self.shared_experts.down_proj.weight.is_residual_proj = True
        # Token slots per expert since the last bias update (summed over micro-batches).
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_routed_experts), persistent=False)

    @torch.no_grad()
    def record_load(self, counts: torch.Tensor) -> None:
        """Add a training forward's expert counts to the load the next bias update balances. Kept out of forward,
        so that forward has no side effects (gradient checkpointing runs it twice)."""
        self.tokens_per_expert += counts.to(self.tokens_per_expert.dtype)

    def forward(self, x: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, MoEStats]:
        """x: (B, T, D). token_mask: optional (B, T) bool, the tokens that count in the expert loads, the
        balance losses and the bias update (padding does not); every token is still computed."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, D)
        r = self.gate(x2)
        E, K = self.cfg.n_routed_experts, self.cfg.top_k
        mask = None if token_mask is None else token_mask.reshape(-1).to(torch.float32)  # (N,)
        if mask is None:
            counts = dispatch = torch.bincount(r.topk_idx.reshape(-1), minlength=E)  # (E,) token slots
        else:  # masked tokens' slots go to bins E..2E-1: one integer bincount (deterministic, no host sync)
            bins = r.topk_idx + E * (mask[:, None] == 0)  # (N, K)
            both = torch.bincount(bins.reshape(-1), minlength=2 * E)  # (2E,)
            counts, dispatch = both[:E], both[:E] + both[E:]  # counted slots; all slots, for dispatch
        y = self.experts(x2, r.topk_idx, r.topk_weight, dispatch)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x2)
        zero = x.new_zeros((), dtype=torch.float32)
        if not self.training:  # decoding and evaluation need no balance losses: keep them off that path
            return y.view(shape), MoEStats(zero, zero, counts, r.topk_idx, r.topk_weight, zero, r.logits)
        aux = load_balance_loss(r.scores, counts, K, self.cfg.scoring, mask) if self.cfg.use_aux_loss else zero
        z = router_z_loss(r.logits, mask) if self.cfg.use_z_loss else zero
        with torch.no_grad():
            p = r.scores / r.scores.sum(-1, keepdim=True)
            ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (N,)
            entropy = ent.mean() if mask is None else (ent * mask).sum() / mask.sum().clamp_min(1)
        return y.view(shape), MoEStats(aux, z, counts.detach(), r.topk_idx.detach(), r.topk_weight.detach(), entropy,
                                       r.logits)

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """DeepSeek-V3 aux-loss-free balancing, once per optimizer step: b += rate * sign(mean_load - load)."""
        load = self.tokens_per_expert
        if load.sum() > 0:
            bias = self.gate.e_score_correction_bias
            bias += rate * torch.sign(load.mean() - load)
            bias -= bias.mean()  # keep it mean-centred
        load.zero_()
