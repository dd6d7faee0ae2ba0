"""Decoding speed with the KV cache vs recomputing the prefix, and cache bytes per token (MLA vs MHA).

    python experiments/bench_generate.py [--prompt 64] [--new 256] [--batches 1,8]

moe_lm's moe_100m with random weights, greedy, fp32 on CPU or bf16 on CUDA. "recompute" runs the
whole sequence through the model for every new token (no cache), the baseline the cache removes.
"""

from __future__ import annotations

import argparse
import time

import torch

from moe_lm.cli import compose
from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache


@torch.no_grad()
def decode(model: MoETransformer, prompt: torch.Tensor, new: int, cached: bool) -> float:
    """Tokens/s for `new` greedy tokens after `prompt` (B, P)."""
    t0 = time.perf_counter()
    ids = prompt
    cache = KVCache(model.cfg.n_layers) if cached else None
    nxt = None
    for _ in range(new):
        step_in = ids if (not cached or nxt is None) else nxt
        logits = model(step_in, cache=cache).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return prompt.shape[0] * new / (time.perf_counter() - t0)


def cache_bytes_per_token(model: MoETransformer, device: torch.device, dtype: torch.dtype) -> int:
    cache = KVCache(model.cfg.n_layers)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model(torch.zeros(1, 16, dtype=torch.long, device=device), cache=cache)
    return cache.nbytes() // 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = compose(["model=moe_100m"]).model
    torch.manual_seed(0)
    model = MoETransformer(cfg).to(device, dtype).eval()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; moe_100m, {dtype}, prompt {args.prompt} + {args.new} new tokens, greedy\n")
    print("| batch | cached tok/s | recompute tok/s | speed-up |\n|---:|---:|---:|---:|")
    for b in [int(x) for x in args.batches.split(",")]:
        prompt = torch.randint(0, cfg.vocab_size, (b, args.prompt), device=device)
        decode(model, prompt, 4, True)  # warm-up
        fast, slow = decode(model, prompt, args.new, True), decode(model, prompt, args.new, False)
        print(f"| {b} | {fast:,.1f} | {slow:,.1f} | {fast / slow:.1f}x |")
    elt = torch.finfo(dtype).bits // 8
    mla = cache_bytes_per_token(model, device, dtype)
    mha_d = 2 * cfg.n_layers * cfg.d_model * elt  # K and V of d_model each, per layer
    mha_expanded = cfg.n_layers * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * elt  # what MLA expands to
    print(f"\ncache bytes/token ({dtype}): MLA {mla:,} (latent {cfg.kv_lora_rank} + rope key {cfg.qk_rope_head_dim}"
          f" per layer); MHA with d_model-wide K and V {mha_d:,} (MLA/MHA {mla / mha_d:.3f}); MHA with MLA's"
          f" per-head dims {mha_expanded:,} (MLA/MHA {mla / mha_expanded:.3f})")


if __name__ == "__main__":
    main()
