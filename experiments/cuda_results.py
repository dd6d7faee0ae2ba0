"""The tables of a cuda_checks.sh run, for docs/performance.md and docs/training.md, and its rows for
moe_lm/resources/measured_throughput.json:

    python experiments/cuda_results.py OUT --commit abc1234 --date 2026-12-06 [--rows]

OUT is the folder cuda_checks.sh wrote (grid*.json, recipe_h100/result.json, the evaluate reports).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def grid_table(path: Path) -> str:
    d = json.loads(path.read_text())
    lines = [f"{d['device']}, micro-batch {d['batch']} x {d['seq']}, {d['precision']}; compiler: {d.get('compiler')}",
             "", "| case | ms per step (min-max) | tokens/s | MFU | peak GiB | / dense (same mode) |",
             "|---|---:|---:|---:|---:|---:|"]
    s = d["summary"]
    for name, c in s.items():
        mode = name.rsplit(" ", 1)[-1] if name.startswith("moe_100m ") else ""
        dense = s.get(f"dense_100m {mode}", s["dense_100m"]) if mode not in ("", "eager") else s["dense_100m"]
        lines.append(f"| {name} | {1e3 * c['median_s']:.1f} ({1e3 * c['min_s']:.1f}-{1e3 * c['max_s']:.1f}) | "
                     f"{c['tok_s']:,.0f} | {100 * c['mfu']:.1f}% | {c.get('peak_gib', float('nan')):.1f} | "
                     f"{c['median_s'] / dense['median_s']:.2f} |")
    return "\n".join(lines)


def rows(path: Path, commit: str, date: str) -> list[dict]:
    d = json.loads(path.read_text())
    device = next((k for k in ("H200", "H100", "A100", "L4", "T4") if k in d["device"]), d["device"])
    out = []
    for name, c in d["summary"].items():
        if not name.startswith("moe_100m") or " ce " in name:
            continue
        impl, mode = (name.split(" ")[1:3] + ["", ""])[:2] if name != "moe_100m" else ("auto", "eager")
        out.append({"device": device, "device_name": d["device"], "model": "moe_100m", "batch": d["batch"],
                    "seq_len": d["seq"], "precision": d["precision"], "compiled": mode not in ("eager", ""),
                    "compile_mode": mode, "moe_impl": impl, "tokens_per_s": round(c["tok_s"]),
                    "tokens_per_s_range": [round(c["tokens"] / c["max_s"]), round(c["tokens"] / c["min_s"])],
                    "flops_per_token": c["flops_per_token"], "date": date, "commit": commit,
                    "command": f"python experiments/bench_train_step.py --device cuda --batch {d['batch']} --seq "
                               f"{d['seq']} --grid ...", "source": "experiments/cuda_checks.sh"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--rows", action="store_true", help="print measured_throughput.json rows instead of tables")
    args = ap.parse_args()
    grids = sorted(args.out.glob("grid*.json"))
    if args.rows:
        print(json.dumps([r for g in grids for r in rows(g, args.commit, args.date)], indent=1))
        return
    for g in grids:
        print(grid_table(g) + "\n")
    result = args.out / "recipe_h100" / "result.json"
    if result.exists():
        r = json.loads(result.read_text())
        print(f"recipe_h100: {r['steps']} steps, {r['tokens'] / 1e6:.1f}M tokens in {r['wall_s'] / 60:.1f} min "
              f"({r['tokens'] / r['wall_s']:,.0f} tokens/s with validation and checkpoints); "
              + ", ".join(f"{k} {v}" for k, v in r.items() if k.startswith(("val/", "spec/"))))


if __name__ == "__main__":
    main()
