"""Which dispatch paths run the moe_100m training step (forward, fused loss, backward) without a host-device sync
on a GPU: each path's step under `torch.cuda.set_sync_debug_mode("error")`, which raises on any synchronising
call. The CPU tests patch the entry points instead (tests/training/test_step_sync.py); this is the device's word.

    python experiments/cuda_sync_check.py [--batch 8] [--seq 1024] [--impls grouped_mm,capacity,bmm,loop]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from moe_lm.cli import compose
from moe_lm.model import MoETransformer


def step(model, ids) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids[:, :-1], targets=ids[:, 1:])
    (out.ce_sum / ids[:, 1:].numel() + 0.01 * out.aux_loss + 0.001 * out.z_loss).backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--impls", default="grouped_mm,capacity,bmm,loop")
    args = ap.parse_args()
    base = compose(["model=moe_100m"]).model
    results = {}
    for impl in args.impls.split(","):
        torch.manual_seed(0)
        model = MoETransformer(dataclasses.replace(base, moe_impl=impl)).cuda().train()
        ids = torch.randint(0, base.vocab_size, (args.batch, args.seq + 1), device="cuda")
        step(model, ids)  # warm-up: allocations and lazy initialisation may sync once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(model, ids)
            results[impl] = "no sync"
        except RuntimeError as e:
            results[impl] = "syncs: " + str(e).strip().splitlines()[0][:200]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        print(f"{impl}: {results[impl]}", flush=True)
        del model
        torch.cuda.empty_cache()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
