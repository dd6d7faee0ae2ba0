"""Peak memory of one moe_100m train step, with the LM head + cross-entropy over all logits and in chunks.

    python experiments/bench_memory.py [--batch 8] [--seq 1024] [--chunk 2048] [--json PATH]

Each case runs in a fresh process (so one case's freed memory cannot hide in the other's peak): one step to
allocate the optimizer state, then the peak of a second step is read: CUDA's allocator peak on a GPU, the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs) on CPU. On CPU the child runs with
MALLOC_MMAP_THRESHOLD_=65536, so glibc maps every block above 64 KiB on its own and returns it when freed: the
resident set then follows the memory in use instead of what the allocator keeps cached. Reported beside the
memory before the step (weights, AdamW state, caches), so the difference is what the step itself needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchlib import arguments, device_name, write_json

MIB = 2 ** 20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(batch: int, seq: int, chunk: int, device: torch.device) -> dict:
    from bench_train_step import make_step

    args = argparse.Namespace(batch=batch, seq=seq, precision="bf16", ce_chunk_size=chunk)
    step, _, _ = make_step("moe_100m", args, device)
    step()  # optimizer state allocated
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        before = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        step()
        peak = _status_kib("VmHWM") * 1024
    return {"before_mib": before / MIB, "peak_mib": peak / MIB, "step_mib": (peak - before) / MIB}


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=256, help="trainer.ce_chunk_size of the chunked case")
    ap.add_argument("--case", type=int, default=None, help="internal: run one case (its chunk size) and print JSON")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.case is not None:
        print(json.dumps(measure(args.batch, args.seq, args.case, device)))
        return
    rows = {}
    for name, chunk in (("full logits", 0), (f"chunks of {args.chunk}", args.chunk)):
        cmd = [sys.executable, __file__, "--case", str(chunk), "--batch", str(args.batch), "--seq", str(args.seq),
               "--device", args.device]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        rows[name] = json.loads(out.splitlines()[-1])
    print(f"device: {device_name(device)}; moe_100m train step, batch {args.batch} x {args.seq}, bf16\n")
    print("| LM head + loss | before the step (MiB) | peak (MiB) | step's own (MiB) |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['before_mib']:,.0f} | {r['peak_mib']:,.0f} | {r['step_mib']:,.0f} |")
    full, chunked = rows.values()
    saving = {"peak_saving": 1 - chunked["peak_mib"] / full["peak_mib"],
              "step_saving": 1 - chunked["step_mib"] / full["step_mib"]}
    print(f"\nchunked vs full: peak {100 * saving['peak_saving']:.1f}% lower, the step's own memory "
          f"{100 * saving['step_saving']:.1f}% lower")
    write_json(args.json, {"device": device_name(device), "batch": args.batch, "seq": args.seq, "cases": rows,
                           **saving})


if __name__ == "__main__":
    main()
