"""Decoding with the KV cache: greedy for one prompt, and batched generation with samplers.

Batched prompts of different lengths are left-padded. Each row's RoPE positions start at 0 at its
first real token and padded keys are masked out, so a padded row computes exactly what it would alone.
Shape legend: B batch, P padded prompt length, S cached + new tokens, V vocab.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from moe_lm.config import SamplingConfig
from moe_lm.inference.logits_processors import build_processors, next_token
from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache


@torch.no_grad()
def greedy_decode(model: MoETransformer, prompt: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Greedy continuation of one prompt, using the KV cache; stops at EOS or the context limit."""
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    (out,) = list(generate_ids(model, [prompt], cfg, eos_id))
    return out


def fit_context(prompts: list[list[int]], max_ctx: int, max_new_tokens: int) -> list[list[int]]:
    """Cut prompts that fill the context to their last tokens, leaving room for min(max_new_tokens, max_ctx / 2)
    new ones, and say so; warn when generation will stop at the context limit before max_new_tokens."""
    longest = max(len(p) for p in prompts)
    if longest >= max_ctx:
        keep = max_ctx - min(max_new_tokens, max_ctx // 2)
        warnings.warn(f"prompt: {longest} tokens do not fit the model's context of {max_ctx} (model.max_seq_len); "
                      f"keeping the last {keep} so that {max_ctx - keep} tokens can be generated")
        return [p[-keep:] for p in prompts]
    if longest + max_new_tokens > max_ctx:
        warnings.warn(f"max_new_tokens: {longest}-token prompt + {max_new_tokens} exceeds the model's context of "
                      f"{max_ctx}; generation stops after {max_ctx - longest} tokens")
    return prompts


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        valid[i, width - len(p):] = True
    return ids, valid


def _prefill_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, P, P) bool: causal, real keys only; a padding query sees itself (never an empty row)."""
    P = valid.shape[1]
    causal = torch.ones(P, P, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(P, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye)[:, None]


@torch.no_grad()
def generate_ids(model: MoETransformer, prompts: list[list[int]], cfg: SamplingConfig, eos_id: Optional[int] = None,
                 stream: bool = False) -> Iterator[list[int]]:
    """Generate continuations (token ids, prompt excluded) for a batch of prompts.

    With stream=True, yields the list of new tokens of row 0 after every step (for printing as they come);
    otherwise yields each row's continuation once, at the end.
    """
    model.eval()
    device = next(model.parameters()).device
    max_ctx = model.cfg.max_seq_len
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: every prompt needs at least one token")
    prompts = fit_context(prompts, max_ctx, cfg.max_new_tokens)
    ids, valid = _left_pad(prompts, eos_id if eos_id is not None else 0, device)
    B, P = ids.shape
    positions = (valid.long().cumsum(-1) - 1).clamp_min(0)  # (B, P): 0 at each row's first real token
    steps = min(cfg.max_new_tokens, max_ctx - P)
    cache = KVCache(model.cfg.n_layers, max_len=P + steps)  # allocated once, written in place
    logits = model(ids, cache=cache, positions=positions, attn_mask=_prefill_mask(valid), routing_stats=False
                   ).logits[:, -1]
    gen = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    procs = build_processors(cfg)
    # every position this call can fill, allocated once: the token history (-1 = padding, ignored by the
    # penalties) and the attention mask over the cache
    history = torch.full((B, P + steps), -1, dtype=ids.dtype, device=device)
    history[:, :P] = ids.masked_fill(~valid, -1)
    mask = torch.ones(B, 1, 1, P + steps, dtype=torch.bool, device=device)
    mask[:, 0, 0, :P] = valid
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    next_pos = positions[:, -1:] + 1  # (B, 1)
    for step in range(steps):
        tok = next_token(logits, history[:, :P + step], cfg, procs, gen)  # (B,)
        for i, t in enumerate(tok.tolist()):  # one transfer per step
            if done[i]:
                continue
            if t == eos_id:
                done[i] = True
            else:
                out[i].append(t)
        if stream:
            yield out[0]
        if all(done) or step == steps - 1:  # no forward whose logits nobody would read
            break
        history[:, P + step] = tok
        logits = model(tok[:, None], cache=cache, positions=next_pos, attn_mask=mask[..., :P + step + 1],
                       routing_stats=False).logits[:, -1]
        next_pos = next_pos + 1
    if not stream:
        yield from out


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one occurred."""
    cuts = [text.index(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def generate(model: MoETransformer, tokenizer, prompts: list[str], **sampling) -> list[str]:
    """Text in, text out, for a batch of prompts of any lengths. `sampling`: SamplingConfig fields."""
    from moe_lm.data.bpe import EOT

    cfg = SamplingConfig(**sampling)
    eot = tokenizer.token_to_id(EOT)
    prefix = [eot] if eot is not None else []
    ids = [prefix + tokenizer.encode(p).ids for p in prompts]
    return [cut_at_stop(tokenizer.decode(o), cfg.stop)[0] for o in generate_ids(model, ids, cfg, eot)]


def stop_prefix_len(text: str, stops: Iterable[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string (held back while streaming)."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def stream_text(model: MoETransformer, tokenizer, prompt_ids: list[int], cfg: SamplingConfig, eos_id: Optional[int],
                write: Callable[[str], Any]) -> str:
    """Generate for one prompt, passing text to `write` as it is produced; stops at a stop string, of which
    nothing is ever written (a possible beginning of one is held back until it is decided). -> the text."""
    printed, text = "", ""
    for ids in generate_ids(model, [prompt_ids], cfg, eos_id, stream=True):
        text, stopped = cut_at_stop(tokenizer.decode(ids), cfg.stop)
        if stopped:
            break
        safe = text[: len(text) - stop_prefix_len(text, cfg.stop)]
        write(safe[len(printed):])
        printed = safe
    write(text[len(printed):] + "\n")
    return text
