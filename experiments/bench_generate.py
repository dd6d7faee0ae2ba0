"""Decoding speed: moe_lm's generate path (preallocated latent KV cache; eager, or compiled over a fixed-shape cache;
row- or column-major weights) against recomputing the prefix, and cache bytes per token (MLA vs MHA).

    python experiments/bench_generate.py [--prompt 64] [--new 256] [--batch 1] [--reps 5] [--json PATH]

moe_100m with random weights, greedy, fp32 on CPU or bf16 on CUDA, cases timed in interleaved rounds (compiling
happens in the warm-up):
- "cached": moe_lm.inference.decode.generate_ids, eager (sampling compile=false);
- "cached, column-major" (CPU only): the same on a copy of the model whose weights are column-major
  (column_major_weights, what `python -m moe_lm.generate` does on the CPU without compile=true);
- "cached, compiled": sampling compile=true (the one-token step compiled over a StaticKVCache; a CUDA graph on a
  GPU; on the CPU, one-row matmuls as inductor kernels of their own, decode.one_row_matmul_options), what
  `python -m moe_lm.generate compile=true` does;
- "cached, compiled, column-major, BLAS one-row" (CPU only): compiled without one_row_matmul_options, on
  column-major weights: the fastest CPU path before the one-row kernels;
- "recompute": the whole sequence through the model (its own row-major weights) for every new token, no cache, no
  routing statistics: the baseline a cache removes.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from benchlib import arguments, device_name, interleaved, summarise, table, write_json
from moe_lm.cli import compose
from moe_lm.config import SamplingConfig
from moe_lm.inference import decode
from moe_lm.inference.decode import column_major_weights, generate_ids
from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache


def blas_one_row(call: Callable[[], None]) -> Callable[[], None]:
    """call() with the compiled step before the one-row kernels: one-row matmuls left to BLAS (no one_row_matmul_options)."""
    def run() -> None:
        options, decode.one_row_matmul_options = decode.one_row_matmul_options, dict
        try:
            call()
        finally:
            decode.one_row_matmul_options = options
    return run


@torch.no_grad()
def recompute(model: MoETransformer, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding of `new` tokens after `prompt` (B, P), the whole sequence recomputed for each."""
    ids = prompt
    for _ in range(new):
        nxt = model(ids, routing_stats=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[:, prompt.shape[1]:]


def cache_bytes_per_token(model: MoETransformer, device: torch.device, dtype: torch.dtype) -> int:
    cache = KVCache(model.cfg.n_layers)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model(torch.zeros(1, 16, dtype=torch.long, device=device), cache=cache)
    return cache.nbytes() // 16


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = compose(["model=moe_100m"]).model
    torch.manual_seed(0)
    model = MoETransformer(cfg).to(device, dtype).eval()
    prompt = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt), device=device)
    outputs = {}

    def cached(name, m, compile_):
        sampling = SamplingConfig(max_new_tokens=args.new, temperature=0.0, compile=compile_)

        def call():
            outputs[name] = torch.tensor(list(generate_ids(m, prompt.tolist(), sampling)))
        return call

    def baseline():
        outputs["recompute"] = recompute(model, prompt, args.new)

    # the column-major layout serves the CPU's BLAS; a GPU's matmuls gain nothing from it
    col = column_major_weights(copy.deepcopy(model)) if device.type == "cpu" else None
    cases = {"cached": cached("cached", model, False)}
    if col is not None:
        cases["cached, column-major"] = cached("cached, column-major", col, False)
    cases["cached, compiled"] = cached("cached, compiled", model, True)
    if col is not None:
        name = "cached, compiled, column-major, BLAS one-row"
        cases[name] = blas_one_row(cached(name, col, True))
    cases["recompute"] = baseline
    print(f"device: {device_name(device)}; moe_100m, {dtype}, batch {args.batch}, prompt {args.prompt} + "
          f"{args.new} new tokens, greedy; {args.reps} interleaved rounds after {args.warmup} warm-up\n")
    times = interleaved(cases, args.reps, args.warmup, device)
    same = {k: torch.equal(outputs["recompute"].cpu(), v.cpu()) for k, v in outputs.items()}
    summary = summarise(times, "recompute")
    print(table(summary, "recompute"))
    speedup = {name: 1 / s["ratio"] for name, s in summary.items()}
    print("\nspeed-up over recompute: " + "; ".join(f"{k} {v:.1f}x" for k, v in speedup.items())
          + f"\nsame tokens as recompute: {same}")
    elt = torch.finfo(dtype).bits // 8
    mla = cache_bytes_per_token(model, device, dtype)
    mha_d = 2 * cfg.n_layers * cfg.d_model * elt  # K and V of d_model each, per layer
    mha_expanded = cfg.n_layers * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * elt  # what MLA expands to
    print(f"\ncache bytes/token ({dtype}): MLA {mla:,} (latent {cfg.kv_lora_rank} + rope key {cfg.qk_rope_head_dim}"
          f" per layer); MHA with d_model-wide K and V {mha_d:,} (MLA/MHA {mla / mha_d:.3f}); MHA with MLA's"
          f" per-head dims {mha_expanded:,} (MLA/MHA {mla / mha_expanded:.3f})")
    write_json(args.json, {"device": device_name(device), "batch": args.batch, "prompt": args.prompt,
                           "new": args.new, "summary": summary, "speedup": speedup, "same_tokens": same,
                           "cache_bytes_per_token": {"mla": mla, "mha": mha_d, "mha_mla_dims": mha_expanded}})


if __name__ == "__main__":
    main()
