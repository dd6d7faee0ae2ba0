"""Decoding with the KV cache: greedy for one prompt, and batched generation with samplers; optionally with the
one-token step compiled (sampling compile=true) and the weights laid out for one-row matmuls (column_major_weights).

Batched prompts of different lengths are left-padded. Each row's RoPE positions start at 0 at its
first real token and padded keys are masked out, so a padded row computes exactly what it would alone.
Shape legend: B batch, P padded prompt length, S cached + new tokens, V vocab.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from moe_lm.config import SamplingConfig
from moe_lm.inference.logits_processors import build_processors, next_token
from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache, StaticKVCache

STATIC_CACHE_BUCKET = 256  # a compiled step's cache holds a multiple of this many slots: few shapes, few compiles
ONE_ROW_MAX_WIDTH = 1 << 20  # a compiled CPU step computes one-row matmuls up to this wide as their own kernels


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
def column_major_weights(model: nn.Module) -> nn.Module:
    """Store every weight matrix of `model` column-major, in place: the same values, each (out, in) matrix (and each
    expert's, in a stacked (E, out, in)) held as the transpose of a contiguous (in, out) one. Decoding multiplies
    one row per sequence by every weight, and on the project's CPU (MKL on AMD EPYC) such matmuls run faster from
    this layout (docs/performance.md, "Decoding"; `python -m moe_lm.generate` applies it on the CPU). Meant for inference:
    the model still trains, but many-row matmuls gain nothing from it."""
    for p in model.parameters():
        if p.dim() >= 2:
            p.data = p.data.transpose(-1, -2).contiguous().transpose(-1, -2)
    return model


def one_token_step(model: MoETransformer, tok: torch.Tensor, cache: KVCache, positions: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """tok (B, 1), positions (B, 1), mask (B, 1, 1, S) -> next-token logits (B, V): one decoding step."""
    return model(tok, cache=cache, positions=positions, attn_mask=mask, routing_stats=False).logits[:, -1]


def one_row_matmul_options() -> dict[str, Any]:
    """Inductor options under which a compiled CPU step computes every one-row matmul (batch 1 decoding) as a
    multiply-and-sum kernel of its own (inductor's decompose_mm_pass) instead of a BLAS call: on the project's CPU
    that reads a row-major weight at over 80% of a plain read's speed, where MKL's one-row product reaches less
    than half (docs/performance.md, "Decoding"). The pass's width limit (2048 by default, under the 32000-wide head) is a
    module constant inductor reads once on import, so it is raised there as well; it only acts in graphs compiled
    with the pass, as this step's are. {} where this torch lacks the pass: plain inductor, the same tokens."""
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm as one_row
    except ImportError:
        return {}
    if not hasattr(one_row, "cpu_max_other_dimension_decomposition"):
        return {}
    width = max(one_row.cpu_max_other_dimension_decomposition, ONE_ROW_MAX_WIDTH)
    one_row.cpu_max_other_dimension_decomposition = width
    return {"post_grad_fusion_options": {"decompose_mm_pass": {"cpu_max_other_dimension_decomposition": width}}}


def step_function(model: MoETransformer, compiled: bool, device: torch.device) -> Callable[..., torch.Tensor]:
    """one_token_step, or it compiled: one graph for a given batch size and cache length (StaticKVCache), replayed
    as a CUDA graph on a GPU ("reduce-overhead"); on the CPU, inductor fuses the elementwise work between matmuls
    and turns one-row matmuls into bandwidth-bound kernels (one_row_matmul_options)."""
    if not compiled:
        return one_token_step
    if device.type == "cuda":
        return torch.compile(one_token_step, dynamic=False, mode="reduce-overhead")
    options = one_row_matmul_options() if device.type == "cpu" else None
    return torch.compile(one_token_step, dynamic=False, options=options)


@torch.no_grad()
def generate_ids(model: MoETransformer, prompts: list[list[int]], cfg: SamplingConfig, eos_id: Optional[int] = None,
                 stream: bool = False) -> Iterator[list[int]]:
    """Generate continuations (token ids, prompt excluded) for a batch of prompts.

    With stream=True, yields the list of new tokens of row 0 after every step (for printing as they come);
    otherwise yields each row's continuation once, at the end. cfg.compile: the prompt is read eagerly, then every
    new token comes from the compiled one-token step over a StaticKVCache of a bucketed length (the same tokens).
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
    if cfg.compile:  # fixed shapes: every step attends over all S slots, the unfilled ones masked
        S = min(max_ctx, -(-(P + steps) // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET)
        cache: KVCache = StaticKVCache(model.cfg.n_layers, S, device)
    else:  # every step attends over the filled slots only
        S = P + steps
        cache = KVCache(model.cfg.n_layers, max_len=S)  # allocated once, written in place
    # the attention mask over the cache's slots, allocated once: the prompt's real tokens, then each new token's
    # slot switched on as it is written
    mask = torch.zeros(B, 1, 1, S, dtype=torch.bool, device=device)
    mask[:, 0, 0, :P] = valid
    prefill_mask = _prefill_mask(valid)  # (B, 1, P, P)
    if cfg.compile:
        prefill_mask = torch.cat((prefill_mask, prefill_mask.new_zeros(B, 1, P, S - P)), -1)  # (B, 1, P, S)
    logits = model(ids, cache=cache, positions=positions, attn_mask=prefill_mask, routing_stats=False).logits[:, -1]
    step_fn = step_function(model, cfg.compile, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    procs = build_processors(cfg)
    # the token history, allocated once (-1 = padding, ignored by the penalties)
    history = torch.full((B, P + steps), -1, dtype=ids.dtype, device=device)
    history[:, :P] = ids.masked_fill(~valid, -1)
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
        mask[..., P + step] = True
        logits = step_fn(model, tok[:, None], cache, next_pos, mask if cfg.compile else mask[..., :P + step + 1])
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
