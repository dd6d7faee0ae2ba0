"""Next-token cross-entropy fused with the LM head, over chunks of rows.

Shape legend: M rows (tokens with a target), D model width, V vocab, C rows per chunk.

The plain path materialises the (M, V) logits in fp32 and keeps them for the backward pass: at 8 x 1024 tokens and
a 32k vocab that is 1 GiB, more than the rest of a 100M model's activations. Here each chunk's logits live only
while that chunk is processed: the forward pass computes the chunk's loss *and* its gradients (softmax - one-hot,
pushed through the head), so nothing of size V is kept and nothing is recomputed. The loss is the same sum of
per-token cross-entropies; the backward pass only scales the stored gradients by the incoming one.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # the target of a padding position (moe_lm.data.text_lines uses the same)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap) (Gemma 2's logit soft-capping); cap 0 leaves the logits as they are."""
    return cap * torch.tanh(logits / cap) if cap else logits


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 0,
                         cap: float = 0.0, z_loss: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(sum over rows of cross_entropy(z, targets), sum over rows of logsumexp(z)^2 or None unless z_loss), where
    z = softcap(hidden @ weight.T, cap). hidden (M, D), weight (V, D), targets (M,); rows whose target is negative
    (IGNORE_INDEX, padding) count for nothing in either.

    chunk_size 0: the plain path (full logits). Otherwise rows are processed chunk_size at a time."""
    if chunk_size <= 0:
        logits = softcap(F.linear(hidden, weight).float(), cap)  # (M, V)
        ce = F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX)
        if not z_loss:
            return ce, None
        return ce, (logits.logsumexp(-1).pow(2) * (targets != IGNORE_INDEX)).sum()
    kind = hidden.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(kind, enabled=False):  # the function casts itself, as autocast would cast F.linear
        ce, z = _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, dtype, need_grad, cap, z_loss)
    return ce, z if z_loss else None


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Outputs (ce_sum, z_sum). The forward pass keeps the gradients of each, with respect to hidden and weight."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                dtype: torch.dtype, need_grad: bool, cap: float, z_loss: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w = weight.to(dtype)  # (V, D)
        totals = torch.zeros(2, dtype=torch.float32, device=hidden.device)  # ce, z
        grads = [_Grads(hidden, weight, need_grad), _Grads(hidden, weight, need_grad and z_loss)]  # ce, z
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows].to(dtype)  # (C, D)
            t = targets[rows]  # (C,)
            keep = (t != IGNORE_INDEX).float()  # (C,)
            t = t.clamp_min(0)
            raw = F.linear(h, w).float()  # (C, V)
            logits = softcap(raw, cap)
            lse = logits.logsumexp(-1)  # (C,)
            totals[0] += ((lse - logits.gather(1, t[:, None]).squeeze(1)) * keep).sum()
            if z_loss:
                totals[1] += (lse.pow(2) * keep).sum()
            if not need_grad:
                continue
            # d/d raw = d/d logits * (1 - tanh^2) under the cap
            dcap = 1.0 - (logits / cap).pow(2) if cap else None  # (C, V)
            soft = logits.sub_(lse[:, None]).exp_()  # (C, V) softmax, in place of the logits
            if z_loss:  # d lse^2 / d logits = 2 lse softmax
                gz = soft * (2.0 * lse * keep)[:, None]
                grads[1].add(rows, gz if dcap is None else gz * dcap, h, w, dtype)
            soft[torch.arange(len(t), device=t.device), t] -= 1.0  # d ce / d logits
            soft *= keep[:, None]
            grads[0].add(rows, soft if dcap is None else soft * dcap, h, w, dtype)
        ctx.save_for_backward(*grads[0].tensors(), *grads[1].tensors())
        ctx.weight_dtype, ctx.has_z = weight.dtype, grads[1].on
        return totals[0].clone(), totals[1].clone()

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor, grad_z: torch.Tensor):
        saved = ctx.saved_tensors
        grad_hidden = saved[0] * grad_ce.to(saved[0].dtype)
        grad_weight = saved[1] * grad_ce
        if ctx.has_z:
            grad_hidden = grad_hidden + saved[2] * grad_z.to(saved[2].dtype)
            grad_weight = grad_weight + saved[3] * grad_z
        return grad_hidden, grad_weight.to(ctx.weight_dtype), None, None, None, None, None, None


class _Grads:
    """The gradients of one summed loss with respect to hidden (M, D) and weight (V, D, summed in fp32)."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, on: bool) -> None:
        self.on = on
        self.hidden = torch.empty_like(hidden) if on else None
        self.weight = torch.zeros_like(weight, dtype=torch.float32) if on else None

    def add(self, rows: slice, g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> None:
        """g: (C, V) d loss / d raw logits of the rows; h (C, D), w (V, D) in the compute dtype."""
        g = g.to(dtype)
        self.hidden[rows] = (g @ w).to(self.hidden.dtype)  # (C, D)
        self.weight += (g.t() @ h).float()  # (V, D)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.hidden, self.weight) if self.on else ()
