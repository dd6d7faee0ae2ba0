"""Logit lens and routing per token: what each layer would predict, and which experts each token went to.

`report` gives the architecture and parameter table, then for every prompt token the top next-token
predictions after every layer (the residual stream through the final norm and LM head) and the experts
the token was routed to in every MoE layer, with their weights.
"""

from __future__ import annotations

import torch

from moe_lm.model import MoETransformer
from moe_lm.model.counting import param_breakdown


@torch.no_grad()
def logit_lens(model: MoETransformer, ids: list[int], top: int = 5):
    """Per layer: (T, top) token ids and probabilities; plus routing (L_moe, T, K) ids and weights."""
    out = model(torch.tensor([ids]), return_hidden=True)
    lens = []
    for h in out.hidden_states:  # (1, T, D)
        probs = model.lm_head(model.norm(h))[0].float().softmax(-1)  # (T, V)
        p, i = probs.topk(top, dim=-1)
        lens.append((i, p))
    return lens, out.topk_idx, out.topk_weight


def report(model: MoETransformer, tok, prompt: str, top: int = 5) -> str:
    from moe_lm.data.bpe import EOT

    eot = tok.token_to_id(EOT)
    ids = ([eot] if eot is not None else []) + tok.encode(prompt).ids
    lens, experts, weights = logit_lens(model, ids, top)
    moe_layers = [i for i, layer in enumerate(model.layers) if layer.is_moe]
    lines = [str(model.cfg), ""]
    lines += [f"{k:<22}{v:>14,}" for k, v in param_breakdown(model, model.cfg).items()]
    for t, tid in enumerate(ids):
        lines += ["", f"token {t}: {tok.id_to_token(tid)!r}"]
        for layer, (i, p) in enumerate(lens):
            preds = "  ".join(f"{tok.id_to_token(int(a))!r} {float(b):.2f}" for a, b in zip(i[t], p[t]))
            route = ""
            if layer in moe_layers and experts is not None:
                m = moe_layers.index(layer)
                route = "  | experts " + ", ".join(f"{int(e)}:{float(w):.2f}" for e, w in zip(experts[m, t], weights[m, t]))
            lines.append(f"  layer {layer:2d}: {preds}{route}")
    return "\n".join(lines)
