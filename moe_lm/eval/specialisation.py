"""Do the experts specialise by domain? Scores of a domain x expert routing table (pure functions, used live by
the routing monitor at every validation and offline on saved `routing/*.json`).

Inputs are token-slot counts (L, D, E): MoE layer, domain, routed expert. `experts[d]` is the routed expert
mapped to domain d in conf/data/domains.yaml, or None for a domain without one (web), which the
own-expert scores and the mutual information leave out.

- own-expert hit rate: the fraction of a domain's tokens whose top-k holds its own expert (uniform routing: K/E,
  ceiling 1). A token's K experts are distinct, so it is the own expert's slots over the domain's tokens;
- own-expert share: the fraction of a domain's slots that go to its own expert (uniform routing: 1/E, ceiling
  1/K);
- top-1 own rate: the same for each token's highest-weighted expert only (counts of top-1 choices);
- NMI: mutual information between domain and chosen expert over the expert domains' slots, divided by the
  mean of the two entropies (scikit-learn's arithmetic normalisation): 1 for a one-to-one map, 0 when the
  expert does not depend on the domain;
- per-domain routing entropy (nats) and coefficient of variation (std / mean) of the domain's expert shares,
  and the load coefficient of variation over all domains' slots (`load_cv`).
Per-layer values are averaged over layers for the headline numbers.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over the last dim of probabilities that sum to 1 (or all zeros -> 0)."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def normalised_mutual_information(joint: torch.Tensor) -> torch.Tensor:
    """joint: (D, E) counts -> NMI in [0, 1] (0 when either variable has a single value)."""
    p = joint.double() / joint.sum().clamp_min(1)
    h_d, h_e = _entropy(p.sum(1)), _entropy(p.sum(0))
    mi = h_d + h_e - _entropy(p.flatten())
    denom = (h_d + h_e) / 2
    return (mi / denom).clamp(0, 1) if denom > 1e-12 else torch.zeros((), dtype=torch.float64)


def own_share(counts: torch.Tensor, experts: Sequence[Optional[int]]) -> torch.Tensor:
    """counts (L, D, E) -> (L, D_own): each expert domain's share of slots on its own expert."""
    own = [(d, e) for d, e in enumerate(experts) if e is not None]
    c = counts.double()
    return torch.stack([c[:, d, e] / c[:, d].sum(-1).clamp_min(1) for d, e in own], dim=-1)


def hit_rate(counts: torch.Tensor, top1: torch.Tensor, experts: Sequence[Optional[int]]) -> torch.Tensor:
    """counts, top1 (L, D, E) -> (L, D_own): each expert domain's share of tokens with its own expert in the top-k.
    top1 holds one count per token, so its row sums are the domain's tokens."""
    own = [(d, e) for d, e in enumerate(experts) if e is not None]
    c, t = counts.double(), top1.double()
    return torch.stack([c[:, d, e] / t[:, d].sum(-1).clamp_min(1) for d, e in own], dim=-1)


def specialisation_metrics(counts: torch.Tensor, top1: torch.Tensor, domains: Sequence[str],
                           experts: Sequence[Optional[int]]) -> dict[str, float]:
    """counts, top1: (L, D, E) slot counts of all top-k choices and of the top-1 choice -> flat metric dict."""
    own_domains = [n for n, e in zip(domains, experts) if e is not None]
    own_idx = [d for d, e in enumerate(experts) if e is not None]
    out: dict[str, float] = {}
    if own_idx:
        share, first = own_share(counts, experts), own_share(top1, experts)  # (L, D_own)
        hits = hit_rate(counts, top1, experts)  # (L, D_own)
        nmi = torch.stack([normalised_mutual_information(layer[own_idx]) for layer in counts])  # (L,)
        out.update({"hit_rate": float(hits.mean()), "own_share": float(share.mean()), "top1_own": float(first.mean()),
                    "nmi": float(nmi.mean())})
        out.update({f"hit_rate/{n}": float(hits[:, i].mean()) for i, n in enumerate(own_domains)})
        out.update({f"own_share/{n}": float(share[:, i].mean()) for i, n in enumerate(own_domains)})
        out.update({f"top1_own/{n}": float(first[:, i].mean()) for i, n in enumerate(own_domains)})
        out.update({f"own_share/layer{li}": float(v) for li, v in enumerate(share.mean(1))})
        out.update({f"nmi/layer{li}": float(v) for li, v in enumerate(nmi)})
    c = counts.double()
    shares = c / c.sum(-1, keepdim=True).clamp_min(1)  # (L, D, E)
    ent = _entropy(shares).mean(0)  # (D,)
    cv = (shares.std(-1, unbiased=False) / shares.mean(-1).clamp_min(1e-12)).mean(0)  # (D,)
    out.update({f"entropy/{n}": float(ent[d]) for d, n in enumerate(domains)})
    out.update({f"load_cv/{n}": float(cv[d]) for d, n in enumerate(domains)})
    load = c.sum(1)  # (L, E)
    out["load_cv"] = float((load.std(-1, unbiased=False) / load.mean(-1).clamp_min(1e-12)).mean())
    return out
