"""Which domain and which window every sample of every batch comes from: a pure function of (seed, batch index).

Phase 1 (batches of the first `round_robin_steps` optimizer steps): every batch comes wholly from one
domain, cycling through the expert domains (and web, if interleaved). Phase 2: each sample's domain is
drawn from the mixture weights. Because batch k depends only on (seed, k), resuming is setting k.
"""

from __future__ import annotations

import numpy as np

from moe_lm.config import ConfigError, DomainsDataConfig


def mixture_weights(cfg: DomainsDataConfig, tokens: dict[str, int]) -> np.ndarray:
    """Phase-2 domain probabilities, in the order of cfg.domains."""
    names = list(cfg.domains)
    if cfg.mixture == "explicit":
        w = np.array([cfg.mixture_weights[n] for n in names], dtype=np.float64)
    else:
        w = np.array([tokens[n] for n in names], dtype=np.float64)
        if cfg.mixture == "temperature":
            w = w ** (1.0 / cfg.mixture_temperature)
    return w / w.sum()


def round_robin_order(cfg: DomainsDataConfig) -> list[int]:
    """Domain indices cycled in phase 1: expert domains, plus web-like (no expert) ones if interleaved."""
    return [i for i, d in enumerate(cfg.domains.values()) if d.expert is not None or cfg.round_robin_web]


class BatchPlan:
    """batch(k) -> (domain index per sample, window start per sample)."""

    def __init__(self, cfg: DomainsDataConfig, n_tokens: list[int], seed: int, accumulate: int = 1) -> None:
        self.cfg, self.seed, self.accumulate = cfg, seed, accumulate
        self.n_tokens = np.array(n_tokens)
        self.weights = mixture_weights(cfg, dict(zip(cfg.domains, n_tokens)))
        self.order = round_robin_order(cfg)
        self.width = cfg.seq_len + 1
        short = [n for n, t in zip(cfg.domains, n_tokens) if t < self.width]
        if short:
            raise ConfigError(f"data.seq_len: {cfg.seq_len} needs more tokens than the train shards of {short} hold")

    def describe(self) -> dict:
        """What decides the batches besides the seed, as plain data (checked when a run resumes)."""
        return {"domains": list(self.cfg.domains), "train_tokens": self.n_tokens.tolist(),
                "weights": [round(float(w), 12) for w in self.weights], "round_robin_steps": self.cfg.round_robin_steps,
                "round_robin_order": self.order, "batch_size": self.cfg.batch_size, "seq_len": self.cfg.seq_len}

    def phase(self, k: int) -> int:
        return 1 if k // self.accumulate < self.cfg.round_robin_steps else 2

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, k])
        B = self.cfg.batch_size
        if self.phase(k) == 1:
            domains = np.full(B, self.order[(k // self.accumulate) % len(self.order)])
        else:
            domains = rng.choice(len(self.weights), size=B, p=self.weights)
        starts = rng.integers(0, self.n_tokens[domains] - self.width + 1)  # uniform window start per sample
        return domains, starts
