"""Load balance: the Switch/GShard auxiliary loss (per batch, optionally over a window of batches), DeepSeek-V3's
sequence-wise loss, the router z-loss, and the aux-loss-free bias rule.

Shape legend: N tokens, B sequences, T time, E routed experts, K top-k.
"""

from __future__ import annotations

from typing import Optional

import torch


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


@torch.no_grad()
def aux_free_bias_step(bias: torch.Tensor, load: torch.Tensor, rate: float) -> None:
    """DeepSeek-V3 aux-loss-free balancing, in place: b += rate * sign(mean_load - load), kept mean-centred."""
    bias += rate * torch.sign(load.mean() - load)
    bias -= bias.mean()
