"""What every benchmark here shares: interleaved timing, median and spread, a markdown table and a JSON file.

The machine is noisy, so the cases are timed in turn (A, B, C, A, B, C, ...) after warm-up, never one block each;
each repetition's ratio to the baseline is taken within the repetition, so a slow moment hits both sides.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(cases: dict[str, Callable[[], object]], reps: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each case: `warmup` untimed calls each, then `reps` rounds timing every case once."""
    if reps < 5:
        raise ValueError(f"--reps: at least 5 timed repetitions, got {reps}")
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per case: median and min/max seconds, and the ratio to the baseline (median of the per-round ratios, with
    their min and max)."""
    out = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[baseline])]
        out[name] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "reps": len(ts)}
    return out


def table(summary: dict[str, dict[str, float]], baseline: str, unit: str = "s") -> str:
    scale = {"s": 1.0, "ms": 1e3}[unit]
    lines = [f"| case | median ({unit}) | min-max ({unit}) | ratio to {baseline} (min-max) |", "|---|---:|---:|---:|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['median_s'] * scale:.4g} | {s['min_s'] * scale:.4g}-{s['max_s'] * scale:.4g} | "
                     f"{s['ratio']:.3f} ({s['ratio_min']:.3f}-{s['ratio_max']:.3f}) |")
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nresults: {path}")


def arguments(doc: str, **defaults) -> argparse.ArgumentParser:
    """The options every benchmark takes: --reps, --warmup, --json, --device."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=defaults.get("reps", 5), help="timed rounds (>= 5)")
    ap.add_argument("--warmup", type=int, default=defaults.get("warmup", 2), help="untimed calls per case first")
    ap.add_argument("--json", default=defaults.get("json", ""), help="write the results here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap
