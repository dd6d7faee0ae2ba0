"""Train-step throughput: moe_100m vs a dense model with the same active parameters per token.

    python experiments/bench_train_step.py [--batch 8] [--seq 256] [--steps 5] [--warmup 2] [--precision bf16]

Runs full optimizer steps (forward, backward, clip, fused AdamW) on random tokens, both models in the same
process, and prints tokens/s, MFU against the device peak (moe_lm.training.callbacks) and the MoE/dense ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from moe_lm.cli import compose
from moe_lm.training.callbacks import device_peak_flops
from moe_lm.model import MoETransformer
from moe_lm.model.counting import param_breakdown, train_flops_per_token


def bench(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = compose([f"model={preset}", f"data.seq_len={args.seq}"]).model
    torch.manual_seed(0)
    model = MoETransformer(cfg).to(device)
    if args.compile:
        model.compile()
    parts = param_breakdown(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with amp:
            out = model(x[:, :-1])
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), x[:, 1:].flatten())
            loss = loss + 0.01 * out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_router_biases()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    tok_s = args.batch * args.seq / dt
    flops = train_flops_per_token(cfg, parts, args.seq)
    return {"model": preset, "total": parts["total"], "active": parts["active_per_token"], "step_s": dt,
            "tok_s": tok_s, "mfu": tok_s * flops / device_peak_flops(device, args.peak_flops)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; batch {args.batch} x {args.seq}, {args.precision}, {args.steps} timed steps")
    rows = [bench("moe_100m", args, device), bench("dense_100m", args, device)]
    print("\n| model | total params | active params | step (s) | tokens/s | MFU |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['total'] / 1e6:.1f}M | {r['active'] / 1e6:.1f}M | {r['step_s']:.3f} | "
              f"{r['tok_s']:,.0f} | {100 * r['mfu']:.2f}% |")
    print(f"\nMoE / dense tokens/s ratio: {rows[0]['tok_s'] / rows[1]['tok_s']:.2f}")


if __name__ == "__main__":
    main()
