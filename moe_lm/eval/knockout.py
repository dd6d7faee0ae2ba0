"""What does each routed expert know? Remove it from routing and see which domain's loss rises.

For each routed expert e, every domain is scored again with e removed from routing in every MoE layer: its
score is masked before top-k, so tokens go to the remaining experts (shared experts and everything else
untouched). The result is the domain x expert matrix of loss rises (nats/token, and % of the plain loss), and
per expert domain the causal specialisation ratio: the rise when its own expert is removed over the mean rise
when another routed expert is removed (and, stricter, over the largest such rise).

Shape legend: D domains, E routed experts.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from moe_lm.config import ConfigError
from moe_lm.model import MoETransformer


@contextmanager
def experts_removed(model: MoETransformer, experts: Sequence[int]) -> Iterator[None]:
    """Within the block, the given routed experts are never chosen, in every MoE layer (besides any removed already,
    by experts.drop)."""
    layers = model.moe_layers()
    if model.cfg.router_type != "token_choice":
        raise ConfigError(f"model.router_type: knockout needs token_choice routing, the model has "
                          f"{model.cfg.router_type}")
    E = model.cfg.n_routed_experts
    bad = [e for e in experts if not 0 <= e < E]
    if bad:
        raise ConfigError(f"experts {bad}: the model has routed experts 0..{E - 1}")
    before = [moe.gate.removed_experts for moe in layers]
    mask = torch.zeros(E, dtype=torch.bool)
    mask[list(experts)] = True
    if before and before[0] is not None:
        mask |= before[0].cpu()
    if int(mask.sum()) > E - model.cfg.top_k:
        raise ConfigError(f"removing {int(mask.sum())} of {E} experts leaves fewer than top_k={model.cfg.top_k}")
    try:
        for moe in layers:
            moe.gate.removed_experts = mask.to(moe.gate.weight.device)
        yield
    finally:
        for moe, prev in zip(layers, before):
            moe.gate.removed_experts = prev


def ratios(rise: torch.Tensor, domains: Sequence[str], experts: Sequence[Optional[int]]) -> dict[str, dict[str, Any]]:
    """rise (D, E) -> per expert domain: own expert, own rise, mean and max rise of the other routed experts, and
    own / mean other (`ratio_mean`) and own / max other (`ratio_max`); a ratio is None where its denominator
    is <= 0 (removing other experts does not hurt this domain at all). `own_3x_any_other`: the own expert's
    removal hurts, and at least 3 times as much as removing any other routed expert."""
    out = {}
    for d, (name, e) in enumerate(zip(domains, experts)):
        if e is None:
            continue
        others = torch.cat([rise[d, :e], rise[d, e + 1:]])
        own, mean_other, max_other = float(rise[d, e]), float(others.mean()), float(others.max())
        out[name] = {"expert": e, "own_rise": own, "mean_other_rise": mean_other, "max_other_rise": max_other,
                     "ratio_mean": own / mean_other if mean_other > 0 else None,
                     "ratio_max": own / max_other if max_other > 0 else None,
                     "own_3x_any_other": own > 0 and own >= 3 * max_other}
    return out


def knockout_matrix(model: MoETransformer, streams: dict[str, list[int]], experts: Sequence[Optional[int]],
                    context: int, stride: int, batch_size: int, precision: str = "fp32") -> dict[str, Any]:
    """Plain loss per domain, then the loss with each routed expert removed. experts[d]: domain d's own expert."""
    from moe_lm.eval.heldout import evaluate_domains

    names = list(streams)
    infos = {n: {"files": [], "documents": 0, "skipped": {}, "bytes": None} for n in names}

    def losses(label: str) -> torch.Tensor:
        results = evaluate_domains(model, streams, infos, context, stride, batch_size, precision, label=label)[0]
        return torch.tensor([r["loss"] for r in results], dtype=torch.float64)  # (D,)

    base = losses("plain")
    with_removed = []
    for e in range(model.cfg.n_routed_experts):
        with experts_removed(model, [e]):
            with_removed.append(losses(f"expert {e} removed"))
    loss = torch.stack(with_removed, 1)  # (D, E)
    rise = loss - base[:, None]
    return {"domains": names, "experts": list(experts), "base_loss": base.tolist(), "loss": loss.tolist(),
            "rise": rise.tolist(), "rise_pct": (100 * rise / base[:, None]).tolist(),
            "ratios": ratios(rise, names, experts)}


def markdown(result: dict[str, Any]) -> str:
    E = len(result["rise"][0])
    rows = ["| domain | loss | " + " | ".join(f"-E{e}" for e in range(E)) + " | own / mean other | own / max other |",
            "|---|---:|" + "---:|" * (E + 2)]
    for d, name in enumerate(result["domains"]):
        r = result["ratios"].get(name)
        cells = []
        for e in range(E):
            c = f"{result['rise'][d][e]:+.4f} ({result['rise_pct'][d][e]:+.1f}%)"
            cells.append(f"**{c}**" if r and r["expert"] == e else c)
        fmt = (lambda v: "-" if v is None else f"{v:.2f}")
        rows.append(f"| {name} | {result['base_loss'][d]:.4f} | " + " | ".join(cells) + " | "
                    + (f"{fmt(r['ratio_mean'])} | {fmt(r['ratio_max'])}" if r else "- | -") + " |")
    return ("loss rise (nats/token, % of the plain loss) when one routed expert is removed from routing; "
            "own expert in bold\n\n" + "\n".join(rows))


def heatmap(result: dict[str, Any], path: Path, title: str) -> Path:
    from moe_lm.eval.plots import matrix_heatmap

    pct = torch.tensor(result["rise_pct"])
    return matrix_heatmap(pct, result["domains"], result["experts"], path, title, cmap="magma",
                          vmin=min(0.0, float(pct.min())), vmax=max(1.0, float(pct.max())),
                          xlabel="routed expert removed", fmt="{:+.1f}", cbar_label="loss rise (%)")
