"""Router rows from the domains (`routing.router_init=domain_mean`), in the spirit of FlexOlmo's domain-informed
router: before the first step of a fresh run (after init_from, so an upcycled model's hidden states are used),
a forward pass over a few training batches of each domain records every MoE layer's router input; each routed
expert's row becomes the mean router input of its domain's tokens, less the mean of all domains' means (so the
rows differ where the domains differ), scaled to the mean norm of the rows it replaces. Experts without a domain
keep their rows.

Shape legend: L MoE layers, D domains, N tokens, C model width, E routed experts.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from moe_lm.model import MoETransformer


def domain_batches(shards, plan, n_batches: int, seed: int) -> list[tuple[int, torch.Tensor]]:
    """(domain index, input ids (B, T)) for n_batches batches of every domain, windows drawn from its train split
    with their own generator (the run's batch order is untouched)."""
    rng = np.random.default_rng([seed, 0x5EED])
    B, width = plan.cfg.batch_size, plan.width
    out = []
    for d, n in enumerate(plan.n_tokens):
        for _ in range(n_batches):
            starts = rng.integers(0, n - width + 1, size=B)
            ids = np.stack([shards.window(d, int(s), width)[:-1] for s in starts])
            out.append((d, torch.from_numpy(ids)))
    return out


@torch.no_grad()
def domain_mean_router_inputs(model: MoETransformer, batches: Sequence[tuple[int, torch.Tensor]],
                              n_domains: int) -> torch.Tensor:
    """(L, D, C) mean router input of each domain's tokens in each MoE layer (fp64)."""
    layers = model.moe_layers()
    width = model.cfg.d_model
    sums = torch.zeros(len(layers), n_domains, width, dtype=torch.float64)
    counts = torch.zeros(n_domains, dtype=torch.float64)
    current = {"domain": 0}

    def record(i: int):
        def hook(module, args) -> None:
            x = args[0]  # (N, C): the router's input
            sums[i, current["domain"]] += x.detach().double().sum(0).cpu()
        return hook

    handles = [moe.gate.register_forward_pre_hook(record(i)) for i, moe in enumerate(layers)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for d, ids in batches:
            current["domain"] = d
            model.forward(ids.to(device), routing_stats=False)  # forward, not __call__: never a compiled graph
            counts[d] += ids.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums / counts.clamp_min(1)[None, :, None]


@torch.no_grad()
def init_router_from_domains(model: MoETransformer, means: torch.Tensor, experts: Sequence[Optional[int]]) -> dict:
    """Set each routed expert's router row from the (L, D, C) domain means; experts[d] is domain d's expert (or
    None). Returns the rows' pairwise cosine similarities per layer (L, E', E') over the initialised experts."""
    centred = means - means.mean(1, keepdim=True)  # (L, D, C): what sets a domain apart
    own = [(d, e) for d, e in enumerate(experts) if e is not None]
    cosines = []
    for moe, layer in zip(model.moe_layers(), centred):
        w = moe.gate.weight
        scale = w.norm(dim=1).mean()
        rows = torch.stack([layer[d] / layer[d].norm().clamp_min(1e-12) for d, _ in own])  # (E', C) unit rows
        for (_, e), row in zip(own, rows):
            w[e] = (row * scale).to(w.dtype)
        cosines.append((rows @ rows.t()).tolist())
    return {"experts": [e for _, e in own], "row_cosines": cosines}
