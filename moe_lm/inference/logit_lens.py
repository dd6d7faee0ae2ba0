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


def token_text(tok, tid: int) -> str:
    """A token as the text it stands for (not its byte-level spelling, `Ġ` for a space), quoted; an id the
    tokenizer does not have (the model's vocabulary can be larger) is shown as such."""
    if tok.id_to_token(tid) is None:
        return f"<id {tid}: no token>"
    return repr(tok.decode([tid], skip_special_tokens=False))


def report(model: MoETransformer, tok, prompt: str, top: int = 5, expert_names: dict[int, str] | None = None) -> str:
    """expert_names: {routed expert: the domain it is warm-started on}, from the run's config."""
    from moe_lm.data.bpe import EOT
    from moe_lm.model.counting import model_line

    names = expert_names or {}
    eot = tok.token_to_id(EOT)
    ids = ([eot] if eot is not None else []) + tok.encode(prompt).ids
    lens, experts, weights = logit_lens(model, ids, top)
    moe_layers = [i for i, layer in enumerate(model.layers) if layer.is_moe]
    parts = param_breakdown(model, model.cfg)
    lines = [model_line(model.cfg), f"parameters: {parts['total']:,} ({parts['active_per_token']:,} active per token)"]
    if names:
        lines.append("experts: " + ", ".join(f"{e} {n}" for e, n in sorted(names.items())))
    lines.append(f"per token: the top {top} next-token predictions after each layer (logit lens) | the experts it "
                 f"was routed to, with their weights")
    for t, tid in enumerate(ids):
        lines += ["", f"token {t}: {token_text(tok, tid)}"]
        for layer, (i, p) in enumerate(lens):
            preds = "  ".join(f"{token_text(tok, int(a))} {float(b):.2f}" for a, b in zip(i[t], p[t]))
            route = ""
            if layer in moe_layers and experts is not None:
                m = moe_layers.index(layer)
                route = "  | experts " + ", ".join(
                    f"{int(e)}{' ' + names[int(e)] if int(e) in names else ''} {float(w):.2f}"
                    for e, w in zip(experts[m, t], weights[m, t]))
            lines.append(f"  layer {layer:2d}: {preds}{route}")
    return "\n".join(lines)


def expert_names(run_cfg: dict | None) -> dict[int, str]:
    """{expert: domain} from a run's config dict (data.domains.<name>.expert), empty for other data."""
    domains = ((run_cfg or {}).get("data") or {}).get("domains") or {}
    return {d["expert"]: name for name, d in domains.items() if isinstance(d, dict) and d.get("expert") is not None}
