"""Mixture-of-Experts feed-forward: router, routed experts, shared experts, balance losses.

Shape legend: N tokens (B*T), D model width, E routed experts, K top-k, I moe_intermediate_size.

Names follow HF transformers' DeepseekV3MoE: `gate.weight` (E, D), `gate.e_score_correction_bias` (E),
`experts.gate_up_proj` (E, 2I, D) with the gate half first, `experts.down_proj` (E, D, I),
`shared_experts.{gate,up,down}_proj` of width n_shared_experts * I.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from moe_lm.config import ModelConfig
from moe_lm.model.layers import FeedForward, activation_fn, is_gated


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
        # (E,) bool: experts removed from routing (never chosen), for knockout evaluation; None = all experts
        self.removed_experts: Optional[torch.Tensor] = None

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
        topk_idx = choice.topk(self.top_k, dim=-1).indices  # (N, K)
        topk_weight = scores.gather(-1, topk_idx)  # (N, K): unbiased scores
        if self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(-1, keepdim=True) + 1e-20)
        return RouterOutput(logits, scores, topk_idx, topk_weight * self.routed_scaling_factor)


def expert_counts(idx: torch.Tensor, n_bins: int) -> torch.Tensor:
    """(n_bins,) int64 occurrences of each bin in idx. A comparison and a sum: a static shape, deterministic on
    every device, and no host sync (bincount's output shape depends on the data, which breaks a compiled graph)."""
    return (idx.reshape(-1, 1) == torch.arange(n_bins, device=idx.device)).sum(0)  # (n_bins,)


# The public name arrived in torch 2.10; before it the same op is torch._grouped_mm (CUDA only).
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@torch.library.custom_op("moe_lm::grouped_mm", mutates_args=())
def traceable_grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """torch's grouped GEMM as an opaque op: a (M, K) @ b (G, K, N) -> (M, N) with row groups ending at offs, or a
    (M, K) @ b (K, N) -> (G, M, N) with the K axis split at offs. torch's tracer takes that op in bf16 only, while
    its CPU kernel runs any float dtype; compiled code on the CPU calls it through this op (shapes from the fake
    below, gradients from two more grouped GEMMs), so fp32 compiles without a graph break."""
    return _grouped_mm(a, b, offs=offs)


@traceable_grouped_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])  # (M, N)
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[-1])  # (G, M, N)


def _grouped_mm_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx, grad: torch.Tensor):
    a, b, offs = ctx.saved_tensors
    grad = grad.contiguous()  # an upstream gradient can arrive expanded (zero strides), which the op refuses
    if b.dim() != 3:
        raise NotImplementedError("moe_lm::grouped_mm: no gradient for the (2-D, 2-D) form")
    grad_a = traceable_grouped_mm(grad, b.transpose(-1, -2), offs)  # (M, K): each group's rows
    grad_b = traceable_grouped_mm(a.t(), grad, offs)  # (G, K, N): each group's a^T grad (views: strides stay legal)
    return grad_a, grad_b, None


traceable_grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in here: autocast's where it is on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def grouped_mm_supported(x: torch.Tensor, widths: tuple[int, ...]) -> bool:
    """Whether torch's grouped GEMM takes these operands: CUDA needs bf16 on sm80+; CPU runs any float dtype (under
    torch.compile other than bf16 through traceable_grouped_mm). Every row stride must be a multiple of 16 bytes."""
    dtype = compute_dtype(x)
    if _grouped_mm is None or not dtype.is_floating_point:
        return False
    if x.device.type == "cuda":
        if dtype != torch.bfloat16 or torch.cuda.get_device_capability(x.device) < (8, 0):
            return False
    elif x.device.type != "cpu" or not hasattr(F, "grouped_mm"):  # torch < 2.10: torch._grouped_mm is CUDA-only
        return False
    return all(w * dtype.itemsize % 16 == 0 for w in widths)


class RoutedExperts(nn.Module):
    """E gated MLPs stored as stacked weights. Three ways to run them (model.moe_impl), equal to fp tolerance:

    - loop: tokens sorted by expert, one matmul pair per expert; the split sizes come to the host (a sync and,
      under torch.compile, a graph break in every MoE layer);
    - grouped_mm: the same sorted tokens through one grouped GEMM per projection, the group ends on the device:
      no host sync (CUDA sm80+ in bf16; CPU in any float dtype, compiled in bf16 only);
    - bmm: every expert on every token as one batched matmul, then weighted by the router (zero for the experts
      a token did not pick): no sort, gather or sync, but E/K times the expert FLOPs;
    - auto: grouped_mm where the device and dtype take it, else loop.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, I, D = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.d_model
        self.n_experts, self.impl = E, cfg.moe_impl
        self.gated = is_gated(cfg.activation)
        if self.gated:
            self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, D))  # gate rows first, as DeepseekV3
        else:
            self.up_proj = nn.Parameter(torch.empty(E, I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))
        self.down_proj.is_residual_proj = True
        self.act = activation_fn(cfg.activation)
        self.act_scale = self.act_shift = None
        if cfg.activation == "learned_gelu":  # per expert and channel, as FeedForward's
            self.act_scale = nn.Parameter(torch.ones(E, I))
            self.act_shift = nn.Parameter(torch.zeros(E, I))

    @property
    def in_proj(self) -> torch.Tensor:
        """(E, 2I or I, D): the input projection(s) of every expert."""
        return self.gate_up_proj if self.gated else self.up_proj

    def resolved_impl(self, x: torch.Tensor) -> str:
        widths = (self.down_proj.shape[1], self.down_proj.shape[2])  # D, I
        if self.impl == "auto":
            return "grouped_mm" if grouped_mm_supported(x, widths) else "loop"
        if self.impl == "grouped_mm" and not grouped_mm_supported(x, widths):
            raise ValueError(f"model.moe_impl: grouped_mm does not run on {x.device.type} in {compute_dtype(x)} "
                             f"with d_model, moe_intermediate_size = {widths} (needs CUDA sm80+ in bf16 or CPU, and "
                             f"widths of a multiple of 16 bytes); use auto, loop or bmm")
        return self.impl

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                counts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (N, D); topk_idx, topk_weight: (N, K); counts: (E,) slots per expert (computed when None)."""
        impl = self.resolved_impl(x)
        if impl == "bmm":
            return self._every_expert(x, topk_idx, topk_weight)
        N, K = topk_idx.shape
        if counts is None:
            counts = expert_counts(topk_idx, self.n_experts)
        order = topk_idx.reshape(-1).argsort(stable=True)  # (N*K,): slots sorted by expert
        token_of_slot = order // K  # (N*K,): which token each sorted slot belongs to
        # cast the N tokens before copying them K times (half the bytes gathered in bf16, one cast per token)
        x_sorted = x.to(compute_dtype(x))[token_of_slot]  # (N*K, D), grouped by expert
        w_sorted = topk_weight.reshape(-1)[order, None]  # (N*K, 1) router weight of each slot
        e_sorted = topk_idx.reshape(-1)[order] if self.act_scale is not None else None  # (N*K,) expert of each slot
        if impl == "grouped_mm":
            y_sorted = self._grouped(x_sorted, w_sorted, counts, e_sorted)  # (N*K, D)
        else:
            y_sorted = self._loop(x_sorted, w_sorted, counts)  # (N*K, D)
        # back to slot order, then each token's K weighted outputs summed (accumulated in fp32, rounded once):
        # deterministic (no atomic adds), and the K-fold copies stay in the compute dtype both ways
        y_slots = y_sorted.new_empty(y_sorted.shape).index_copy_(0, order, y_sorted)  # (N*K, D), slot n*K + k
        return y_slots.view(N, K, -1).sum(1).to(x.dtype)  # (N, D)

    def _hidden(self, h: torch.Tensor, w: torch.Tensor, expert: int | torch.Tensor | None) -> torch.Tensor:
        """The activation of the input projection's output h, times each slot's router weight w. Gated: act(gate) *
        up. Weighting the I-wide input of the (linear) down projection equals weighting its D-wide output, and
        touches fewer values when I < D. expert: the expert of h's rows (an index, or one per row) for learned_gelu's
        scale and shift."""
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # (n, I) each
            return self.act(gate) * (up * w.to(up.dtype))  # (n, I)
        if self.act_scale is not None:  # in h's dtype: grouped_mm takes no mixed operands
            h = h * self.act_scale[expert].to(h.dtype) + self.act_shift[expert].to(h.dtype)
        return self.act(h) * w.to(h.dtype)

    def _loop(self, x_sorted: torch.Tensor, w_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        # unbind once: indexing the stacked weights per expert would zero-fill a full (E, ...) grad each time
        w_in, w_down = self.in_proj.unbind(0), self.down_proj.unbind(0)
        sizes = counts.tolist()  # the host sync
        outs = [F.linear(self._hidden(F.linear(x_e, w_in[e]), w_e, e), w_down[e])  # (n_e, D)
                for e, (x_e, w_e) in enumerate(zip(x_sorted.split(sizes), w_sorted.split(sizes)))]
        return torch.cat(outs)  # (N*K, D)

    def _grouped(self, x_sorted: torch.Tensor, w_sorted: torch.Tensor, counts: torch.Tensor,
                 e_sorted: Optional[torch.Tensor]) -> torch.Tensor:
        dtype = x_sorted.dtype  # the compute dtype: grouped_mm is not on autocast's list, so cast as it would
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end of each expert's rows, on the device
        # compiled code in another dtype than bf16 (the CPU's: CUDA takes bf16 alone) needs the traceable op
        mm = traceable_grouped_mm if torch.compiler.is_compiling() and dtype != torch.bfloat16 else _grouped_mm
        h = mm(x_sorted, self.in_proj.to(dtype).transpose(1, 2), offs=offs)  # (N*K, 2I or I)
        return mm(self._hidden(h, w_sorted, e_sorted), self.down_proj.to(dtype).transpose(1, 2), offs=offs)

    def _every_expert(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        E, (N, D) = self.n_experts, x.shape
        combine = torch.zeros(N, E, dtype=topk_weight.dtype, device=x.device).scatter(1, topk_idx, topk_weight)
        h = torch.bmm(x.unsqueeze(0).expand(E, N, D), self.in_proj.transpose(1, 2))  # (E, N, 2I or I)
        expert = torch.arange(E, device=x.device)[:, None] if self.act_scale is not None else None
        h = self._hidden(h, h.new_ones(()), expert)  # (E, N, I), unweighted: the router weights come after
        y = torch.bmm(h, self.down_proj.transpose(1, 2))  # (E, N, D)
        return torch.einsum("end,ne->nd", y, combine.to(y.dtype)).to(x.dtype)  # (N, D)

    def run_chosen(self, x: torch.Tensor, token_idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Expert choice: expert e runs on the C tokens token_idx[e] (E, C), weighted by weight (E, C); each token
        gets the sum over the experts that chose it (zero if none). Static shapes, no host sync."""
        dtype = compute_dtype(x)
        xe = x.to(dtype)[token_idx]  # (E, C, D)
        h = torch.bmm(xe, self.in_proj.to(dtype).transpose(1, 2))  # (E, C, 2I or I)
        expert = torch.arange(self.n_experts, device=x.device)[:, None] if self.act_scale is not None else None
        h = self._hidden(h, weight[..., None], expert)  # (E, C, I)
        y = torch.bmm(h, self.down_proj.to(dtype).transpose(1, 2))  # (E, C, D)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # accumulated in fp32
        return out.index_add_(0, token_idx.reshape(-1), y.reshape(-1, y.shape[-1]).float()).to(x.dtype)  # (N, D)


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


def load_balance_loss(scores: torch.Tensor, counts: torch.Tensor, top_k: int, scoring: str,
                      mask: Optional[torch.Tensor] = None,
                      prior: Optional[tuple[torch.Tensor, int]] = None) -> torch.Tensor:
    """Switch/GShard loss E * sum_i f_i * P_i over all N tokens of the batch (not per sequence).

    f_i = counts_i / (N*K) is the fraction of token slots sent to expert i (no gradient);
    P_i is the mean routing probability of expert i (sigmoid scores are normalised per token).
    mask: optional (N,) float, 1 for the tokens that count (padding excluded); counts must match it.
    prior: optional (sum of the slot shares f of n earlier batches (E,), n): f is then the mean of this batch's
    and those n batches' shares (a balance window: a one-domain batch is balanced against the others).
    """
    probs = scores if scoring == "softmax" else scores / scores.sum(-1, keepdim=True)
    n_experts = scores.shape[-1]
    n_tokens = scores.shape[0] if mask is None else mask.sum().clamp_min(1)
    f = counts.float() / (n_tokens * top_k)
    if prior is not None:
        f = (f + prior[0].to(f.device, f.dtype)) / (1 + prior[1])
    p_mean = probs.float().mean(0) if mask is None else (probs.float() * mask[:, None]).sum(0) / n_tokens
    return n_experts * (f * p_mean).sum()


def sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, top_k: int, scoring: str,
                          mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise loss: the same E * sum_i f_i * P_i, with f and P taken over each
    sequence's tokens instead of the batch's, averaged over the sequences with a counted token (1.0 when every
    sequence is balanced).

    scores: (B, T, E); topk_idx: (B, T, K); mask: optional (B, T) float, 1 for the tokens that count."""
    B, T, E = scores.shape
    probs = scores if scoring == "softmax" else scores / scores.sum(-1, keepdim=True)
    m = scores.new_ones(B, T) if mask is None else mask.to(scores.dtype)  # (B, T)
    n = m.sum(1).clamp_min(1)  # (B,) tokens per sequence
    picks = (topk_idx[..., None] == torch.arange(E, device=scores.device)).sum(2).float()  # (B, T, E)
    f = (picks * m[..., None]).sum(1) / (n[:, None] * top_k)  # (B, E) share of each sequence's slots
    p_mean = (probs.float() * m[..., None]).sum(1) / n[:, None]  # (B, E)
    has = (m.sum(1) > 0).float()  # (B,) sequences that are all padding do not count
    return E * ((f * p_mean).sum(-1) * has).sum() / has.sum().clamp_min(1)


def router_z_loss(logits: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    z2 = torch.logsumexp(logits.float(), dim=-1).pow(2)  # (N,)
    return z2.mean() if mask is None else (z2 * mask).sum() / mask.sum().clamp_min(1)


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
        E, K = self.cfg.n_routed_experts, self.cfg.top_k
        mask = None if token_mask is None else token_mask.reshape(-1).to(torch.float32)  # (N,)
        if self.cfg.router_type == "expert_choice":
            y, counts = self._expert_choice(x2, r, mask)
        else:
            if mask is None:
                counts = dispatch = expert_counts(r.topk_idx, E)  # (E,) token slots
            else:  # masked tokens' slots go to bins E..2E-1: one count for both
                bins = r.topk_idx + E * (mask[:, None] == 0)  # (N, K)
                both = expert_counts(bins, 2 * E)  # (2E,)
                counts, dispatch = both[:E], both[:E] + both[E:]  # counted slots; all slots, for dispatch
            y = self.experts(x2, r.topk_idx, r.topk_weight, dispatch)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x2)
        zero = x.new_zeros((), dtype=torch.float32)
        if not self.training:  # decoding and evaluation need no balance losses: keep them off that path
            return y.view(shape), MoEStats(zero, zero, counts, r.topk_idx, r.topk_weight, zero, r.logits)
        aux = self._balance_loss(r, counts, mask, shape) if self.cfg.router_type == "token_choice" else zero
        z = router_z_loss(r.logits, mask) if self.cfg.use_z_loss else zero
        with torch.no_grad():
            p = r.scores / r.scores.sum(-1, keepdim=True)
            ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (N,)
            entropy = ent.mean() if mask is None else (ent * mask).sum() / mask.sum().clamp_min(1)
        return y.view(shape), MoEStats(aux, z, counts.detach(), r.topk_idx.detach(), r.topk_weight.detach(), entropy,
                                       r.logits)

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
            bias = self.gate.e_score_correction_bias
            bias += rate * torch.sign(load.mean() - load)
            bias -= bias.mean()  # keep it mean-centred
        load.zero_()
