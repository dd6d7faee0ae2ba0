"""The routed experts' weights and how tokens reach them: the dispatch paths (a per-expert loop, torch's grouped
GEMM, a batched matmul over every expert, per-expert groups padded to a fixed capacity) and the custom op that lets
torch.compile trace the grouped GEMM.

Shape legend: N tokens (B*T), D model width, E routed experts, K top-k, I moe_intermediate_size, C capacity (rows
per expert of the padded path), S = K*N token slots.

Names follow HF transformers' DeepseekV3 experts: `gate_up_proj` (E, 2I, D) with the gate half first,
`down_proj` (E, D, I).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moe_lm.config import ModelConfig
from moe_lm.model.layers import activation_fn, compute_dtype, is_gated


def capacity(n_tokens: int, top_k: int, n_experts: int, factor: Optional[float]) -> int:
    """Rows per expert of the padded path: ceil(factor * N * K / E), at most N (a token takes at most one slot of an
    expert, so C = N never drops a token). factor None: N."""
    if factor is None:
        return n_tokens
    return max(1, min(n_tokens, math.ceil(factor * n_tokens * top_k / n_experts)))


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


# model.moe_impl=auto on CUDA: the path measured fastest per (compute capability major, dtype) with
# experiments/bench_moe_block.py (docs/performance.md): grouped_mm on sm90 in bf16 (H200 and H100: 4.04 ms against
# bmm 4.64 and the loop 5.87 at 16k tokens). A GPU never measured (sm80 A100, sm75 T4, ...) gets the per-expert
# loop: it runs in every dtype on every device, where torch's grouped GEMM has a fast kernel only on sm90.
MEASURED_CUDA_DISPATCH = {(9, torch.bfloat16): "grouped_mm"}


def auto_dispatch(x: torch.Tensor, widths: tuple[int, ...]) -> str:
    """What model.moe_impl=auto runs for an input like x: the measured choice where the operands allow it, else
    the loop. The CPU takes grouped_mm where it can (as fast as the loop, and no graph break under compile)."""
    if not grouped_mm_supported(x, widths):
        return "loop"
    if x.device.type == "cuda":
        major = torch.cuda.get_device_capability(x.device)[0]
        return MEASURED_CUDA_DISPATCH.get((major, compute_dtype(x)), "loop")
    return "grouped_mm"


class RoutedExperts(nn.Module):
    """E gated MLPs stored as stacked weights. Three ways to run them (model.moe_impl), equal to fp tolerance:

    - loop: tokens sorted by expert, one matmul pair per expert; the split sizes come to the host (a sync and,
      under torch.compile, a graph break in every MoE layer);
    - grouped_mm: the same sorted tokens through one grouped GEMM per projection, the group ends on the device:
      no host sync (CUDA sm80+ in bf16; CPU in any float dtype, compiled in bf16 only);
    - bmm: every expert on every token as one batched matmul, then weighted by the router (zero for the experts
      a token did not pick): no sort, gather or sync, but E/K times the expert FLOPs;
    - capacity: each expert's slots gathered into a (C, D) group padded with zero rows, two batched matmuls over
      (E, C, ...): every shape is fixed by (N, C), nothing reaches the host, so CUDA graphs can capture it. Slots
      beyond an expert's C rows are dropped (they add nothing; first choices are placed before second ones, in
      token order); C = N (the default) drops none and costs what bmm does, E/K times the expert FLOPs;
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
            return auto_dispatch(x, widths)
        if self.impl == "grouped_mm" and not grouped_mm_supported(x, widths):
            raise ValueError(f"model.moe_impl: grouped_mm does not run on {x.device.type} in {compute_dtype(x)} "
                             f"with d_model, moe_intermediate_size = {widths} (needs CUDA sm80+ in bf16 or CPU, and "
                             f"widths of a multiple of 16 bytes); use auto, loop or bmm")
        return self.impl

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
                counts: Optional[torch.Tensor] = None, capacity: Optional[int] = None) -> torch.Tensor:
        """x: (N, D); topk_idx, topk_weight: (N, K); counts: (E,) slots per expert (computed when None); capacity:
        rows per expert of the capacity path (None: N, nothing dropped)."""
        impl = self.resolved_impl(x)
        if impl == "bmm":
            return self._every_expert(x, topk_idx, topk_weight)
        if impl == "capacity":
            return self._padded(x, topk_idx, topk_weight, x.shape[0] if capacity is None else capacity)
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

    def _padded(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor, capacity: int
                ) -> torch.Tensor:
        """Per-expert groups of `capacity` rows: slot s = k*N + n (first choices first) goes to row
        e*C + (its rank among expert e's slots) if that rank is below C, else to the drop row E*C."""
        (N, K), E, C = topk_idx.shape, self.n_experts, capacity
        dtype = compute_dtype(x)
        slot_expert = topk_idx.t().reshape(-1)  # (S,) k-major
        onehot = (slot_expert[:, None] == torch.arange(E, device=x.device)).to(torch.int32)  # (S, E)
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # (S,) earlier slots of the same expert
        dest = torch.where(rank < C, slot_expert * C + rank, E * C)  # (S,) padded row, or the drop row
        slots = torch.arange(K * N, device=x.device)
        # which slot fills each padded row (S: none, an all-zero row); only the drop row is written twice
        filled_by = torch.full((E * C + 1,), K * N, device=x.device).scatter_(0, dest, slots)[:E * C]  # (E*C,)
        x_rows = torch.cat((x.to(dtype), x.new_zeros(1, x.shape[1], dtype=dtype)))  # (N + 1, D), row N zero
        token = torch.where(filled_by < K * N, filled_by % N, N)  # (E*C,)
        w_rows = torch.cat((topk_weight.t().reshape(-1), topk_weight.new_zeros(1)))[filled_by]  # (E*C,)
        h = torch.bmm(x_rows[token].view(E, C, -1), self.in_proj.to(dtype).transpose(1, 2))  # (E, C, 2I or I)
        expert = torch.arange(E, device=x.device)[:, None] if self.act_scale is not None else None
        h = self._hidden(h, w_rows.view(E, C, 1), expert)  # (E, C, I), weighted (padding rows: zero)
        y = torch.bmm(h, self.down_proj.to(dtype).transpose(1, 2)).view(E * C, -1)  # (E*C, D)
        y_slots = torch.cat((y, y.new_zeros(1, y.shape[1])))[dest]  # (S, D), dropped slots zero
        return y_slots.view(K, N, -1).sum(0).to(x.dtype)  # (N, D)

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
