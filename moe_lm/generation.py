"""Decoding with the KV cache."""

from __future__ import annotations

import torch

from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache


@torch.no_grad()
def greedy_decode(model: MoETransformer, prompt: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Greedy continuation of one prompt, using the KV cache; stops at EOS or the context limit."""
    model.eval()
    device = next(model.parameters()).device
    cache = KVCache(model.cfg.n_layers)
    ids = torch.tensor([prompt], device=device)
    out: list[int] = []
    budget = min(max_new_tokens, model.cfg.max_seq_len - len(prompt))
    for _ in range(budget):
        logits = model(ids, cache=cache).logits[:, -1]  # (1, V)
        nxt = int(logits.argmax(-1))
        if eos_id is not None and nxt == eos_id:
            break
        out.append(nxt)
        ids = torch.tensor([[nxt]], device=device)
    return out
