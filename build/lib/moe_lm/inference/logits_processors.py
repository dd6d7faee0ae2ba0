"""Samplers as composable logits processors.

Each processor maps (logits (B, V) fp32, history (B, T) token ids, -1 = padding) -> logits, with banned tokens set
to -inf. `build_processors(SamplingConfig)` returns the chain in the usual order: penalties, then
temperature, then the truncations (top-k, top-p, min-p, epsilon). Greedy is temperature 0.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from moe_lm.config import SamplingConfig

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


NEG_INF = float("-inf")


def temperature(t: float) -> Processor:
    return lambda logits, hist: logits / t


def top_k(k: int) -> Processor:
    def f(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, NEG_INF)
    return f


def top_p(p: float) -> Processor:
    """Keep the smallest set of most probable tokens whose probability reaches p."""
    def f(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= p  # mass before this token already reaches p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        return logits.masked_fill(drop, NEG_INF)
    return f


def min_p(p: float) -> Processor:
    def f(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(-1)
        return logits.masked_fill(probs < p * probs.max(-1, keepdim=True).values, NEG_INF)
    return f


def epsilon_cutoff(eps: float) -> Processor:
    def f(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(-1)
        keep_top = probs == probs.max(-1, keepdim=True).values  # never drop everything
        return logits.masked_fill((probs < eps) & ~keep_top, NEG_INF)
    return f


def _counts(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
    """(B, V) occurrences of each token in the history; -1 marks padding."""
    counts = torch.zeros_like(logits)
    if hist.numel() == 0:
        return counts
    return counts.scatter_add_(-1, hist.clamp_min(0), (hist >= 0).to(logits.dtype))


def repetition_penalty(r: float) -> Processor:
    """Seen tokens: positive logits divided by r, negative ones multiplied by r (CTRL)."""
    def f(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        seen = _counts(logits, hist) > 0
        return torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    return f


def presence_frequency_penalty(presence: float, frequency: float) -> Processor:
    def f(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        counts = _counts(logits, hist)
        return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts
    return f


def no_repeat_ngram(n: int) -> Processor:
    """Ban any token that would complete an n-gram already present in the history."""
    def f(logits: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        if hist.shape[-1] < n:
            return out
        for b, row in enumerate(hist.tolist()):
            row = [t for t in row if t >= 0]  # drop padding
            if len(row) < n:
                continue
            prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
            banned = {row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == prefix}
            if banned:
                out[b, list(banned)] = NEG_INF
        return out
    return f


def build_processors(cfg: SamplingConfig) -> list[Processor]:
    procs: list[Processor] = []
    if cfg.repetition_penalty != 1.0:
        procs.append(repetition_penalty(cfg.repetition_penalty))
    if cfg.presence_penalty or cfg.frequency_penalty:
        procs.append(presence_frequency_penalty(cfg.presence_penalty, cfg.frequency_penalty))
    if cfg.no_repeat_ngram_size:
        procs.append(no_repeat_ngram(cfg.no_repeat_ngram_size))
    if cfg.temperature > 0:
        if cfg.temperature != 1.0:
            procs.append(temperature(cfg.temperature))
        if cfg.top_k:
            procs.append(top_k(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(top_p(cfg.top_p))
        if cfg.min_p:
            procs.append(min_p(cfg.min_p))
        if cfg.epsilon:
            procs.append(epsilon_cutoff(cfg.epsilon))
    return procs


def next_token(logits: torch.Tensor, hist: torch.Tensor, cfg: SamplingConfig, procs: list[Processor],
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits (B, V) -> next tokens (B,): greedy when temperature is 0, else a sample."""
    logits = logits.float()
    for p in procs:
        logits = p(logits, hist)
    if cfg.temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
