"""One MoE layer, forward + backward, against what it should cost.

    python experiments/bench_moe_block.py [--tokens 2048] [--reps 5] [--json runs/bench/moe_block.json]

moe_100m's MoE layer (5 routed experts of width 576, top-2, 2 shared) under bf16 autocast, through each dispatch
path (model.moe_impl), beside:
- a dense SwiGLU with the same active parameters per token (width (2 + 2) x 576);
- HF transformers' DeepseekV3MoE with the same weights, its experts run eagerly (a loop over experts that are hit);
- fine-grained experts: 20 routed of a quarter of the width, top-8, 8 shared of that width (the same active and
  total parameters).
Sigmoid scoring throughout, so the HF block computes the same function (checked before timing).
"""

from __future__ import annotations

import dataclasses

import torch

from benchlib import arguments, device_name, interleaved, summarise, table, write_json
from moe_lm.cli import compose
from moe_lm.model.layers import FeedForward
from moe_lm.model.moe import MoE


def hf_block(moe: MoE):
    """DeepseekV3MoE holding `moe`'s weights, or None without transformers."""
    try:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    except ImportError:
        return None
    from moe_lm.model.hf_mapping import hf_config_kwargs

    config = DeepseekV3Config(**hf_config_kwargs(moe.cfg))
    config._experts_implementation = "eager"
    block = DeepseekV3MoE(config).to(moe.gate.weight.device)
    block.load_state_dict({k: v for k, v in moe.state_dict().items() if k != "tokens_per_expert"})
    return block


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    device = torch.device(args.device)
    base = dataclasses.replace(compose(["model=moe_100m"]).model, scoring="sigmoid")
    fine = dataclasses.replace(base, n_routed_experts=20, top_k=8, moe_intermediate_size=base.moe_intermediate_size // 4,
                               n_shared_experts=4 * base.n_shared_experts)
    torch.manual_seed(0)
    x = torch.randn(1, args.tokens, base.d_model, device=device)
    grad = torch.randn_like(x)

    blocks = {}
    for impl in ("loop", "grouped_mm", "bmm", "capacity"):
        torch.manual_seed(0)
        blocks[f"moe {impl}"] = MoE(dataclasses.replace(base, moe_impl=impl)).to(device)
    for moe in blocks.values():
        for p in moe.parameters():
            torch.nn.init.normal_(p, std=0.02)
        moe.load_state_dict(blocks["moe loop"].state_dict())
    active = (base.top_k + base.n_shared_experts) * base.moe_intermediate_size
    blocks["dense SwiGLU"] = FeedForward(base.d_model, active, base.activation).to(device)
    hf = hf_block(blocks["moe loop"])
    if hf is not None:
        with torch.no_grad():
            torch.testing.assert_close(hf(x), blocks["moe loop"].eval()(x)[0], atol=1e-4, rtol=1e-4)
        blocks["HF DeepseekV3MoE eager"] = hf
    for impl in ("loop", "grouped_mm"):
        blocks[f"fine-grained 20x top-8 {impl}"] = MoE(dataclasses.replace(fine, moe_impl=impl)).to(device)

    def run(block):
        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                y = block(x)
            y = y[0] if isinstance(y, tuple) else y
            y.backward(grad)
            block.zero_grad(set_to_none=True)
        return step

    for block in blocks.values():
        block.train()
    print(f"device: {device_name(device)}; {args.tokens} tokens, d_model {base.d_model}, bf16 autocast, "
          f"forward + backward, {args.reps} interleaved rounds after {args.warmup} warm-up\n")
    times = interleaved({name: run(b) for name, b in blocks.items()}, args.reps, args.warmup, device)
    summary = summarise(times, "dense SwiGLU")
    print(table(summary, "dense SwiGLU", "ms"))
    best = min(("moe loop", "moe grouped_mm", "moe bmm", "moe capacity"), key=lambda n: summary[n]["median_s"])
    ratios = {"best_moe_path": best, "moe_over_dense": summary[best]["ratio"]}
    if hf is not None:
        ratios["hf_over_moe"] = summary["HF DeepseekV3MoE eager"]["median_s"] / summary[best]["median_s"]
    fine_best = min((n for n in summary if n.startswith("fine")), key=lambda n: summary[n]["median_s"])
    ratios["fine_grained_over_moe"] = summary[fine_best]["median_s"] / summary[best]["median_s"]
    print(f"\nfastest MoE path: {best}; MoE / dense SwiGLU {ratios['moe_over_dense']:.3f}"
          + (f"; HF eager / MoE {ratios['hf_over_moe']:.3f}" if hf is not None else "")
          + f"; fine-grained ({fine_best}) / MoE {ratios['fine_grained_over_moe']:.3f}")
    write_json(args.json, {"device": device_name(device), "tokens": args.tokens, "summary": summary, **ratios})


if __name__ == "__main__":
    main()
