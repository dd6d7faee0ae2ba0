"""Beam search with the KV cache and a length penalty (score = sum log p / length ** length_penalty)."""

from __future__ import annotations

from typing import Optional

import torch

from moe_lm.model.cache import KVCache


@torch.no_grad()
def beam_search(model, prompt: list[int], num_beams: int = 4, max_new_tokens: int = 32,
                length_penalty: float = 1.0, eos_id: Optional[int] = None) -> tuple[list[int], float]:
    """Best continuation of one prompt and its length-normalised log-probability.

    A hypothesis ends when it emits EOS (not included) or reaches max_new_tokens; the search stops once
    num_beams hypotheses have ended (HF's early_stopping=True).
    """
    if num_beams < 1:
        raise ValueError(f"num_beams: must be >= 1, got {num_beams}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    cache = KVCache(model.cfg.n_layers)
    logits = model(torch.tensor([prompt], device=device), cache=cache).logits[:, -1]  # (1, V)
    cache.reorder(torch.zeros(num_beams, dtype=torch.long, device=device))
    logp = logits.float().log_softmax(-1).expand(num_beams, -1)  # (nb, V)
    scores = torch.full((num_beams,), float("-inf"), device=device)
    scores[0] = 0.0  # all beams start identical: only the first may expand at step one
    seqs: list[list[int]] = [[] for _ in range(num_beams)]
    done: list[tuple[float, list[int]]] = []
    steps = min(max_new_tokens, model.cfg.max_seq_len - len(prompt))
    for step in range(steps):
        cand = (scores[:, None] + logp).flatten()  # (nb * V,)
        top = cand.topk(2 * num_beams)
        V = logp.shape[-1]
        keep_rows, keep_toks, keep_scores = [], [], []
        for score, idx in zip(top.values.tolist(), top.indices.tolist()):
            row, tok = divmod(idx, V)
            if score == float("-inf"):
                break
            if eos_id is not None and tok == eos_id:
                length = max(1, len(seqs[row]))
                done.append((score / length ** length_penalty, seqs[row]))
            else:
                keep_rows.append(row)
                keep_toks.append(tok)
                keep_scores.append(score)
            if len(keep_rows) == num_beams:
                break
        if len(done) >= num_beams or not keep_rows:
            break
        seqs = [seqs[r] + [t] for r, t in zip(keep_rows, keep_toks)]
        if step == steps - 1:
            done += [(s / len(q) ** length_penalty, q) for s, q in zip(keep_scores, seqs)]
            break
        rows = torch.tensor(keep_rows, device=device)
        cache.reorder(rows)
        scores = torch.tensor(keep_scores, device=device)
        toks = torch.tensor(keep_toks, device=device)[:, None]
        logp = model(toks, cache=cache).logits[:, -1].float().log_softmax(-1)
    best_score, best = max(done, key=lambda d: d[0])
    return best, best_score
