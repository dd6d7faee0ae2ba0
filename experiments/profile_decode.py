"""Where a decoding step's time goes, and what the weight layout does to a one-row matmul.

    python experiments/profile_decode.py [--layout column] [--compile [--blas-one-row]] [--option freezing=true ...]
        [--new 64]
    python experiments/profile_decode.py --one-row-matmul [--reps 7]

The first form decodes greedily with moe_100m (random weights, fp32, prompt 64): one untimed call (it compiles,
with --compile), then --reps timed calls (ms per token: median, min-max), then one call under torch.profiler, whose
top operators by self time are printed per step. --option passes inductor settings to torch.compile (e.g.
freezing=true, max_autotune=true, cpp.threads=1) to try them.

The second form times, interleaved, one row times the tied 32000 x 512 head in fp32: through BLAS on row-major and
on column-major weights, as the multiply-and-sum kernel a compiled CPU step makes of it
(decode.one_row_matmul_options), and a plain read of the same 65 MB (sum): how far a one-row product is from the
memory bandwidth.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from benchlib import arguments, device_name, interleaved, summarise, table
from moe_lm.cli import compose
from moe_lm.config import SamplingConfig
from moe_lm.inference import decode
from moe_lm.model import MoETransformer


def parse_option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, {"true": True, "false": False}.get(value.lower(), int(value) if value.lstrip("-").isdigit() else value)


def one_row_matmul(reps: int, warmup: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(32000, 512)
    w_col = w.t().contiguous().t()  # the same values, column-major
    x = torch.randn(1, 512)
    # what a compiled decoding step makes of the product
    kernel = torch.compile(F.linear, dynamic=False, options=decode.one_row_matmul_options())
    cases = {"row-major": lambda: F.linear(x, w), "column-major": lambda: F.linear(x, w_col),
             "row-major, inductor kernel": lambda: kernel(x, w), "read (sum)": w.sum}
    torch.testing.assert_close(kernel(x, w), F.linear(x, w), atol=1e-4, rtol=1e-5)
    summary = summarise(interleaved(cases, reps, warmup, torch.device("cpu")), "row-major")
    print(f"device: {device_name(torch.device('cpu'))}; (1 x 512) @ (512 x 32000) fp32, {reps} interleaved rounds\n")
    print(table(summary, "row-major", unit="ms"))
    gbs = {k: w.numel() * 4 / v["median_s"] / 1e9 for k, v in summary.items()}
    print("\nGB/s of weights read: " + "; ".join(f"{k} {v:.1f}" for k, v in gbs.items()))


def main() -> None:
    ap = arguments(__doc__, reps=5, warmup=1)
    ap.add_argument("--layout", choices=["row", "column"], default="row")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--option", action="append", default=[], help="an inductor option key=value (repeatable)")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--one-row-matmul", action="store_true")
    ap.add_argument("--blas-one-row", action="store_true",
                    help="compile without decode.one_row_matmul_options (one-row matmuls stay BLAS calls)")
    args = ap.parse_args()
    if args.one_row_matmul:
        return one_row_matmul(args.reps, args.warmup)
    torch.manual_seed(0)
    model = MoETransformer(compose(["model=moe_100m"]).model).eval()
    if args.layout == "column":
        decode.column_major_weights(model)
    if args.blas_one_row:  # the compiled step before the one-row kernels: every matmul a BLAS call
        decode.one_row_matmul_options = dict
    options = dict(parse_option(o) for o in args.option)
    if options:  # generate_ids compiles through decode.step_function: hand it the options
        compile_ = torch.compile
        torch.compile = lambda fn, **kw: compile_(fn, **{**kw, "options": {**(kw.get("options") or {}), **options}})
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 64)).tolist()
    sampling = SamplingConfig(max_new_tokens=args.new, temperature=0.0, compile=args.compile)

    def run() -> None:
        list(decode.generate_ids(model, prompt, sampling))

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        run()
    first = time.perf_counter() - t0
    per_token = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        run()
        per_token.append((time.perf_counter() - t0) / args.new * 1e3)
    print(f"device: {device_name(torch.device('cpu'))}; moe_100m fp32, prompt 64 + {args.new} new, layout {args.layout},"
          f" compiled {args.compile}{' (BLAS one-row matmuls)' * args.blas_one_row}, options {options or '-'}")
    print(f"warm-up ({args.warmup} call{'s' * (args.warmup != 1)}, compiling with --compile): {first:.1f} s")
    print(f"ms per token (prompt included): median {statistics.median(per_token):.1f}, "
          f"min-max {min(per_token):.1f}-{max(per_token):.1f} over {args.reps} calls\n")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    steps = args.new - 1  # the prompt's forward, then one step per new token but the last
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    print("| operator (self time) | ms per step | calls per step |\n|---|---:|---:|")
    for e in rows:
        print(f"| {e.key[:60]} | {e.self_cpu_time_total / 1e3 / steps:.2f} | {e.count / steps:.1f} |")


if __name__ == "__main__":
    main()
