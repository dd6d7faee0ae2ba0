"""Train-step time: moe_100m against a dense model with the same active parameters per token, eager and compiled.

    python experiments/bench_train_step.py [--batch 8] [--seq 256] [--reps 5] [--compile] [--chunked 256,1024]
        [--fp16] [--shapes 1x256,2x64] [--grid grouped_mm,capacity,bmm --modes eager,default,reduce-overhead]
        [--json PATH]

Full optimizer steps (forward, fused LM head + cross-entropy, backward, clip, fused AdamW, router-bias step) on
random tokens, every model in this process, timed in interleaved rounds (moe, dense, moe, dense, ...). Prints
median and spread per model, tokens/s and MFU (against the device peak, moe_lm.training.callbacks), and the
ratios the performance goals are stated in. --chunked adds eager moe_100m with the cross-entropy taken in chunks of
that many tokens (trainer.ce_chunk_size), to weigh a default for it. --fp16: fp16 autocast with a grad scaler
and the unfused AdamW (the T4 recipe's path). --shapes adds eager moe_100m at other batch x seq_len shapes,
timed in the same rounds (the demo's choice of window). --grid: moe_100m for each of these model.moe_impl values
in each --modes (eager, or a torch.compile mode: default, reduce-overhead and max-autotune replay CUDA graphs),
beside dense_100m in each mode; dynamo's graph breaks and inductor's CUDA-graph skips are counted and reported. On
CUDA each case's peak memory is measured on one more step.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.profiler import record_function

from benchlib import arguments, device_name, interleaved, summarise, table, write_json
from moe_lm.cli import compose
from moe_lm.model import MoETransformer
from moe_lm.model.counting import param_breakdown, train_flops_per_token
from moe_lm.training.callbacks import device_peak_flops


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def make_step(preset: str, args, device: torch.device, compiled: bool | str = False, moe_impl: str = "",
              ce_chunk_size: int | None = None, shape: tuple[int, int] | None = None):
    """compiled: False (eager), True or "default" (torch.compile's default mode), or another torch.compile mode."""
    batch, seq = shape or (args.batch, args.seq)
    cfg = compose([f"model={preset}", f"data.seq_len={seq}"]).model
    if moe_impl:  # "capacity@1.25": the capacity path with that model.capacity_factor
        impl, _, factor = moe_impl.partition("@")
        cfg = dataclasses.replace(cfg, moe_impl=impl, capacity_factor=float(factor) if factor else None)
    torch.manual_seed(0)
    model = MoETransformer(cfg).to(device)
    mode = "default" if compiled is True else compiled or None
    if mode:
        model.compile(mode=None if mode == "default" else mode)
    graphs = mode in CUDA_GRAPH_MODES  # a replayed graph's outputs are reused: each step is marked as a new one
    fp16 = args.precision == "fp16"  # with a grad scaler and the unfused AdamW, as training runs it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=not fp16)
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    amp = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    chunk = args.ce_chunk_size if ce_chunk_size is None else ce_chunk_size

    def step() -> None:  # the named ranges label experiments/profile_train_step.py's table
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with amp:
            out = model(x[:, :-1], targets=x[:, 1:], ce_chunk_size=chunk)
            loss = out.ce_sum / x[:, 1:].numel() + 0.01 * out.aux_loss
        scaler.scale(loss).backward()
        with record_function("grad clip"):
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("optimizer (fused AdamW)"):
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        with record_function("router bias update"):
            model.update_router_biases()

    parts = param_breakdown(model, cfg)
    return step, {"total": parts["total"], "active": parts["active_per_token"],
                  "flops_per_token": train_flops_per_token(cfg, parts, seq), "tokens": batch * seq}, model


def grid(args) -> list[tuple]:
    """--grid's cases: (name, preset, compile mode or False, moe_impl, ce chunk, shape)."""
    modes = [m for m in args.modes.split(",") if m]
    cases = [(f"moe_100m {impl} {mode}", "moe_100m", mode != "eager" and mode, impl, None, None)
             for impl in args.grid.split(",") if impl for mode in modes]
    return cases + [(f"dense_100m {mode}", "dense_100m", mode, "", None, None) for mode in modes if mode != "eager"] \
        if cases else []


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--compile", action="store_true", help="add the compiled MoE and dense models")
    ap.add_argument("--impls", default="", help="also time these model.moe_impl values, e.g. loop,bmm")
    ap.add_argument("--ce-chunk-size", type=int, default=0, help="every case's trainer.ce_chunk_size")
    ap.add_argument("--chunked", default="", help="also time eager moe_100m with these ce_chunk_size values, e.g. 256")
    ap.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU")
    ap.add_argument("--fp16", action="store_true", help="fp16 autocast with a grad scaler (a T4's path), not bf16")
    ap.add_argument("--shapes", default="", help="also time eager moe_100m at these BxT shapes, e.g. 1x256,2x64")
    ap.add_argument("--grid", default="", help="moe_100m with these model.moe_impl values in each --modes "
                                               "(capacity@F: model.capacity_factor=F)")
    ap.add_argument("--modes", default="eager,default", help="--grid's modes: eager and torch.compile modes")
    args = ap.parse_args()
    if args.fp16:
        args.precision = "fp16"
    device = torch.device(args.device)
    cases, info = {}, {}
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",") if s]
    for name, preset, compiled, impl, chunk, shape in \
            [("moe_100m", "moe_100m", False, "", None, None), ("dense_100m", "dense_100m", False, "", None, None)] + \
            [(f"moe_100m {i}", "moe_100m", False, i, None, None) for i in args.impls.split(",") if i] + \
            [(f"moe_100m ce chunks of {c}", "moe_100m", False, "", int(c), None)
             for c in args.chunked.split(",") if c] + \
            [(f"moe_100m {b}x{t}", "moe_100m", False, "", None, (b, t)) for b, t in shapes] + \
            ([("moe_100m compiled", "moe_100m", True, "", None, None),
              ("dense_100m compiled", "dense_100m", True, "", None, None)] if args.compile else []) + grid(args):
        cases[name], info[name], _ = make_step(preset, args, device, compiled, impl, chunk, shape)
    print(f"device: {device_name(device)}; batch {args.batch} x {args.seq}, {args.precision}, "
          f"{args.reps} interleaved rounds after {args.warmup} warm-up (compiling happens in the warm-up)\n")
    times = interleaved(cases, args.reps, args.warmup, device)
    summary = summarise(times, "dense_100m")
    peak = device_peak_flops(device, args.peak_flops)
    print(table(summary, "dense_100m"))
    print("\n| model | total params | active params | tokens/s | MFU |\n|---|---:|---:|---:|---:|")
    for name, s in summary.items():
        if device.type == "cuda":  # one more step of this case alone: its peak memory
            torch.cuda.reset_peak_memory_stats(device)
            cases[name]()
            torch.cuda.synchronize(device)
            s["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        s["tok_s"] = info[name]["tokens"] / s["median_s"]
        s["mfu"] = s["tok_s"] * info[name]["flops_per_token"] / peak
        s.update(info[name])
        print(f"| {name} | {s['total'] / 1e6:.1f}M | {s['active'] / 1e6:.1f}M | {s['tok_s']:,.0f} | "
              f"{100 * s['mfu']:.2f}% |" + (f" peak {s['peak_gib']:.2f} GiB" if "peak_gib" in s else ""))
    from torch._dynamo.utils import counters

    compiler = {"graph_breaks": sum(sum(counters[k].values()) for k in ("graph_break", "unimplemented")),
                "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
                "unique_graphs": int(counters["stats"].get("unique_graphs", 0))}
    print(f"\ncompiler: {compiler}")
    goals = {"moe_over_dense": summary["moe_100m"]["ratio"]}
    if args.compile:
        goals["eager_over_compiled_moe"] = summary["moe_100m"]["median_s"] / summary["moe_100m compiled"]["median_s"]
    print("\n" + "; ".join(f"{k} {v:.3f}" for k, v in goals.items()))
    write_json(args.json, {"device": device_name(device), "batch": args.batch, "seq": args.seq,
                           "precision": args.precision, "summary": summary, "compiler": compiler, **goals})


if __name__ == "__main__":
    main()
