"""The Mixture-of-Experts feed-forward layer: shared experts plus routed experts, composed from the router
(router.py), the routed experts (experts.py) and the balance losses (balance.py).

Shape legend: N tokens (B*T), D model width, E routed experts, K top-k, I moe_intermediate_size.

Names follow HF transformers' DeepseekV3MoE: `gate` (the router), `experts` (the routed experts),
`shared_experts.{gate,up,down}_proj` of width n_shared_experts * I.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from moe_lm.config import ModelConfig
from moe_lm.model.balance import aux_free_bias_step, load_balance_loss, router_z_loss, sequence_balance_loss
from moe_lm.model.experts import RoutedExperts, capacity, expert_counts
from moe_lm.model.layers import FeedForward
from moe_lm.model.router import RouterOutput, TopkRouter


@dataclass
class MoEStats:
    aux_loss: torch.Tensor  # scalar fp32, switch/GShard balance loss (1.0 when balanced)
    z_loss: torch.Tensor  # scalar fp32, mean squared router logsumexp
    expert_counts: torch.Tensor  # (E,) token slots routed to each expert (masked tokens not counted)
    # (N, K) detached, for routing statistics (every token, masked or not); with expert choice, each token's top-k
    # experts by score (its preference: the experts that actually took it can differ)
    topk_idx: torch.Tensor
    topk_weight: torch.Tensor  # (N, K) detached
    router_entropy: torch.Tensor  # scalar: mean entropy (nats) of each token's normalised expert scores
    router_logits: Optional[torch.Tensor] = None  # (N, E) fp32, with gradient in training (router supervision)
    dropped: Optional[torch.Tensor] = None  # scalar int64: token slots over an expert's capacity (moe_impl=capacity)


class MoE(nn.Module):
    """Shared experts plus routed experts. model.router_type picks which experts run on which token:
    token_choice (each token its top-k experts by router score), hash (the top-k experts of a fixed random hash of
    the token id, weights 1/k; Roller et al. 2021) or expert_choice (each expert its top-C tokens by score, C = N*K/E;
    Zhou et al. 2022: balanced by construction, but a token's experts depend on the other tokens of the batch,
    later ones included, so it is not causal and cannot decode)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = TopkRouter(cfg)
        self.experts = RoutedExperts(cfg)
        self.shared_experts: Optional[FeedForward] = None
        if cfg.n_shared_experts > 0:
            self.shared_experts = FeedForward(cfg.d_model, cfg.n_shared_experts * cfg.moe_intermediate_size,
                                              cfg.activation)
            self.shared_experts.down_proj.weight.is_residual_proj = True
        # Token slots per expert since the last bias update (summed over micro-batches).
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_routed_experts), persistent=False)
        if cfg.router_type == "hash":  # a balanced fixed map token id -> expert, the same on every process and run
            perm = torch.randperm(cfg.vocab_size, generator=torch.Generator().manual_seed(0))
            self.register_buffer("hash_table", perm % cfg.n_routed_experts, persistent=False)  # (V,)
        # With several processes, the trainer sets this to the mean over processes, so that the balance loss sees
        # the global batch's expert loads (each process holds an equal share of its tokens); None: this batch only.
        self.counts_reducer: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        # (summed slot shares (E,) of n earlier steps, n), set by the trainer for a balance window; None: this batch
        self.balance_prior: Optional[tuple[torch.Tensor, int]] = None

    @torch.no_grad()
    def record_load(self, counts: torch.Tensor) -> None:
        """Add a training forward's expert counts to the load the next bias update balances. Kept out of forward,
        so that forward has no side effects (gradient checkpointing runs it twice)."""
        self.tokens_per_expert += counts.to(self.tokens_per_expert.dtype)

    def _route(self, r: RouterOutput, token_ids: Optional[torch.Tensor]) -> RouterOutput:
        if self.cfg.router_type != "hash":
            return r
        if token_ids is None:
            raise ValueError("model.router_type=hash: the MoE layer needs the token ids")
        K, E = self.cfg.top_k, self.cfg.n_routed_experts
        first = self.hash_table[token_ids.reshape(-1)]  # (N,)
        idx = (first[:, None] + torch.arange(K, device=first.device)) % E  # (N, K) K distinct experts
        weight = torch.full(idx.shape, self.cfg.routed_scaling_factor / K, device=idx.device)
        return RouterOutput(r.logits, r.scores, idx, weight)

    def _expert_choice(self, x2: torch.Tensor, r: RouterOutput, mask: Optional[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(routed output (N, D), counted tokens per expert (E,)); padding tokens are never chosen."""
        N, E, K = x2.shape[0], self.cfg.n_routed_experts, self.cfg.top_k
        capacity = min(N, max(1, round(N * K / E)))
        pick = r.scores if mask is None else r.scores.masked_fill(mask[:, None] == 0, -1.0)  # scores are >= 0
        weight, token_idx = pick.t().topk(capacity, dim=-1)  # (E, C) each
        weight = weight.clamp_min(0) * self.cfg.routed_scaling_factor
        counts = torch.full((E,), capacity, device=x2.device) if mask is None else mask[token_idx].sum(1).long()
        return self.experts.run_chosen(x2, token_idx, weight), counts

    def forward(self, x: torch.Tensor, token_mask: Optional[torch.Tensor] = None,
                token_ids: Optional[torch.Tensor] = None,
                forced: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, MoEStats]:
        """x: (B, T, D). token_mask: optional (B, T) bool, the tokens that count in the expert loads, the
        balance losses and the bias update (padding does not); every token is still computed. token_ids: (B, T),
        for hash routing. forced: optional (B, T) expert each token must use (-1: none; token choice only)."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, D)
        r = self._route(self.gate(x2, None if forced is None else forced.reshape(-1)), token_ids)
        E = self.cfg.n_routed_experts
        mask = None if token_mask is None else token_mask.reshape(-1).to(torch.float32)  # (N,)
        dropped = None
        if self.cfg.router_type == "expert_choice":
            y, counts = self._expert_choice(x2, r, mask)
        else:
            if mask is None:
                counts = dispatch = expert_counts(r.topk_idx, E)  # (E,) token slots
            else:  # masked tokens' slots go to bins E..2E-1: one count for both
                bins = r.topk_idx + E * (mask[:, None] == 0)  # (N, K)
                both = expert_counts(bins, 2 * E)  # (2E,)
                counts, dispatch = both[:E], both[:E] + both[E:]  # counted slots; all slots, for dispatch
            cap = (capacity(x2.shape[0], self.cfg.top_k, E, self.cfg.capacity_factor)
                   if self.training and self.cfg.moe_impl == "capacity" else None)  # evaluation drops nothing
            y = self.experts(x2, r.topk_idx, r.topk_weight, dispatch, cap)
            dropped = None if cap is None else (dispatch - cap).clamp_min(0).sum()
        if self.shared_experts is not None:
            y = y + self.shared_experts(x2)
        zero = x.new_zeros((), dtype=torch.float32)
        if not self.training:  # decoding and evaluation need no balance losses: keep them off that path
            return y.view(shape), MoEStats(zero, zero, counts, r.topk_idx, r.topk_weight, zero, r.logits, dropped)
        aux = self._balance_loss(r, counts, mask, shape) if self.cfg.router_type == "token_choice" else zero
        z = router_z_loss(r.logits, mask) if self.cfg.use_z_loss else zero
        with torch.no_grad():
            p = r.scores / r.scores.sum(-1, keepdim=True)
            ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (N,)
            entropy = ent.mean() if mask is None else (ent * mask).sum() / mask.sum().clamp_min(1)
        return y.view(shape), MoEStats(aux, z, counts.detach(), r.topk_idx.detach(), r.topk_weight.detach(), entropy,
                                       r.logits, dropped)

    def _balance_loss(self, r: RouterOutput, counts: torch.Tensor, mask: Optional[torch.Tensor],
                      shape: torch.Size) -> torch.Tensor:
        """The configured balance loss (zero when model.use_aux_loss is off)."""
        if not self.cfg.use_aux_loss:
            return counts.new_zeros((), dtype=torch.float32)
        K, scoring = self.cfg.top_k, self.cfg.scoring
        if self.cfg.aux_loss_scope == "sequence":
            B, T = shape[0], shape[1]
            return sequence_balance_loss(r.scores.view(B, T, -1), r.topk_idx.view(B, T, K), K, scoring,
                                         None if mask is None else mask.view(B, T))
        loads = counts if self.counts_reducer is None else self.counts_reducer(counts)
        return load_balance_loss(r.scores, loads, K, scoring, mask, self.balance_prior)

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """DeepSeek-V3 aux-loss-free balancing, once per optimizer step: b += rate * sign(mean_load - load).
        Only token choice selects by score plus bias; the other routers leave it at zero."""
        load = self.tokens_per_expert
        if load.sum() > 0 and self.cfg.router_type == "token_choice":
            aux_free_bias_step(self.gate.e_score_correction_bias, load, rate)
        load.zero_()
