"""The architecture ablation's report (conf/experiment/architecture_ablation.yaml): one row per switch setting.

Each run's `result.json` names its switches (`arch`, ModelConfig.switches()). Per row: seeds, final val loss
(mean +/- half range over seeds), its difference from the baseline and whether that difference is beyond the
spread (the two seed ranges do not overlap), val loss per domain, parameters (inference; training, with MTP)
and the step time.
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from moe_lm.eval.ablation import cell, domains_of, spread

BASELINE = "baseline"


def is_arch_ablation(runs: list[dict]) -> bool:
    return len({r.get("arch") for r in runs if "arch" in r}) > 1


def by_switch(runs: list[dict]) -> dict[str, list[dict]]:
    names = sorted({r["arch"] for r in runs if "arch" in r}, key=lambda a: (a != BASELINE, a))
    return {a: [r for r in runs if r.get("arch") == a] for a in names}


def difference(runs: list[dict], base: list[dict], key: str = "val/loss") -> str:
    """Mean difference from the baseline, with "(beyond spread)" when the seed ranges do not overlap."""
    a = [r[key] for r in runs if key in r]
    b = [r[key] for r in base if key in r]
    if not a or not b or runs is base:
        return "-"
    beyond = min(a) > max(b) or max(a) < min(b)
    flag = " (beyond spread)" if beyond and len(a) > 1 and len(b) > 1 else ""
    return f"{mean(a) - mean(b):+.3f}{flag}"


def arch_table(runs: list[dict]) -> str:
    domains = domains_of(runs)
    groups = by_switch(runs)
    base = groups.get(BASELINE, [])
    cols = ["val loss", "vs baseline"] + domains + ["params", "train params", "step (s)"]
    rows = ["| switch | seeds | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name, rs in groups.items():
        cells = [cell(rs, "val/loss"), difference(rs, base)] + [cell(rs, f"val/loss/{d}") for d in domains]
        cells += [f"{rs[0]['params'] / 1e6:.2f}M", f"{rs[0].get('train_params', rs[0]['params']) / 1e6:.2f}M",
                  cell(rs, "step_time_s", ".2f")]
        rows.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def arch_plot(runs: list[dict], sweep: Path) -> Path:
    """Final val loss per switch setting (mean over seeds, bars: half range), baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_switch(runs)
    names = list(groups)
    vals = [spread([r["val/loss"] for r in groups[n] if "val/loss" in r]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(range(len(names)), [m for m, _ in vals], xerr=[s for _, s in vals], color="tab:blue")
    if BASELINE in groups:
        ax.axvline(vals[names.index(BASELINE)][0], color="gray", linestyle="--", linewidth=1, label="baseline")
        ax.legend()
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(min(m - s for m, s in vals) - 0.05, max(m + s for m, s in vals) + 0.05)
    ax.set_xlabel("final val loss (nats/token)")
    ax.set_title("final val loss per switch (mean over seeds; bars: half range)")
    fig.tight_layout()
    path = sweep / "arch_val_loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
