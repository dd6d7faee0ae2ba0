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


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 0) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight.T, targets). hidden (M, D), weight (V, D), targets (M,);
    rows whose target is negative (IGNORE_INDEX, padding) count for nothing.

    chunk_size 0: the plain path (full logits). Otherwise rows are processed chunk_size at a time."""
    if chunk_size <= 0:
        return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum", ignore_index=IGNORE_INDEX)
    kind = hidden.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(kind, enabled=False):  # the function casts itself, as autocast would cast F.linear
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, dtype, need_grad)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                dtype: torch.dtype, need_grad: bool) -> torch.Tensor:
        w = weight.to(dtype)  # (V, D)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden: Optional[torch.Tensor] = torch.empty_like(hidden) if need_grad else None  # (M, D)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None  # (V, D) fp32 sum
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size].to(dtype)  # (C, D)
            t = targets[start:start + chunk_size]  # (C,)
            keep = (t != IGNORE_INDEX).float()  # (C,)
            t = t.clamp_min(0)
            logits = F.linear(h, w).float()  # (C, V)
            lse = logits.logsumexp(-1)  # (C,)
            total += ((lse - logits.gather(1, t[:, None]).squeeze(1)) * keep).sum()
            if need_grad:
                g = logits.sub_(lse[:, None]).exp_()  # (C, V) softmax, in place of the logits
                g[torch.arange(len(t), device=t.device), t] -= 1.0  # d loss / d logits
                g *= keep[:, None]
                g = g.to(dtype)
                grad_hidden[start:start + chunk_size] = (g @ w).to(hidden.dtype)  # (C, D)
                grad_weight += (g.t() @ h).float()  # (V, D)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_out.to(grad_hidden.dtype), (grad_weight * grad_out).to(ctx.weight_dtype),
                None, None, None, None)
