"""Which tokens does each routed expert get? Per expert, the tokens most over-represented in its routing
relative to their base rate (OLMoE's routing analysis): lift(t, e) = P(t | a slot of expert e) / P(t), from slot
counts summed over the MoE layers. Lift 1: the expert sees the token as often as the text holds it. A token
holds K distinct experts per layer, so the ceiling is 1 / (K x the expert's share of all slots): a token that
has this expert among its top-k in every layer; with 5 equally loaded experts and top-2, 2.5.
"""

from __future__ import annotations

from typing import Any

import torch


def expert_vocabulary(counts: torch.Tensor, tok, top: int, min_count: int) -> list[list[dict[str, Any]]]:
    """counts (V, E) slots per token id and expert -> per expert, up to `top` tokens with at least `min_count`
    slots on it, by lift (ties: more slots first): {token, id, count, lift}."""
    c = counts.double()
    per_expert, per_token, total = c.sum(0), c.sum(1), c.sum()
    out = []
    for e in range(c.shape[1]):
        if per_expert[e] == 0:
            out.append([])
            continue
        lift = (c[:, e] / per_expert[e]) / (per_token / total).clamp_min(1e-30)  # (V,)
        ok = (c[:, e] >= min_count).nonzero().flatten()
        order = sorted(ok.tolist(), key=lambda t: (-float(lift[t]), -float(c[t, e])))[:top]
        out.append([{"token": tok.decode([t]) if tok is not None else str(t), "id": t, "count": int(c[t, e]),
                     "lift": round(float(lift[t]), 3)} for t in order])
    return out


def markdown(vocab: list[list[dict[str, Any]]], owners: dict[int, str]) -> str:
    """One line per expert: its domain (if any) and its tokens as `'token' lift (count)`."""
    lines = ["tokens over-represented on each routed expert (lift over the base rate, slots):"]
    for e, tokens in enumerate(vocab):
        items = ", ".join(f"{t['token']!r} {t['lift']:.2f} ({t['count']})" for t in tokens) or "-"
        lines.append(f"- E{e}{' (' + owners[e] + ')' if e in owners else ''}: {items}")
    return "\n".join(lines)
