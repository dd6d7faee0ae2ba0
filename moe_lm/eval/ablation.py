"""The specialisation ablations' report: arms (dense twin, MoE warm starts) compared over seeds.

Each run's `result.json` says its arm (`dense`, else its `warm_start`: the routing switches' short name,
RoutingConfig.arm) and holds its final `val/loss/<domain>` and `spec/...` scores; `routing/step*.json` beside it
holds the scores at every validation, and `knockout/eval.json` (from `python -m moe_lm.evaluate task=knockout`),
when present, the causal specialisation ratios. Numbers are the mean over seeds +/- half their range.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

ARMS = ("dense", "none", "round_robin", "round_robin+guided", "round_robin+guided+window", "guided", "forced",
        "domain_mean", "guided+domain_mean", "forced+domain_mean")


def arm_of(run: dict) -> str:
    return "dense" if run.get("dense") else str(run.get("warm_start"))


def is_ablation(runs: list[dict]) -> bool:
    return len({arm_of(r) for r in runs if "warm_start" in r}) > 1


def by_arm(runs: list[dict]) -> dict[str, list[dict]]:
    arms = sorted({arm_of(r) for r in runs}, key=lambda a: ARMS.index(a) if a in ARMS else len(ARMS))
    return {a: [r for r in runs if arm_of(r) == a] for a in arms}


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, half the range)."""
    return mean(values), (max(values) - min(values)) / 2


def cell(runs: list[dict], key: str, fmt: str = ".3f") -> str:
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    if not vals:
        return "-"
    m, s = spread(vals)
    return f"{m:{fmt}} ± {s:{fmt}}" if len(vals) > 1 else f"{m:{fmt}}"


def domains_of(runs: list[dict]) -> list[str]:
    keys = {k for r in runs for k in r if k.startswith("val/loss/")}
    return sorted(k.removeprefix("val/loss/") for k in keys)


def ablation_table(runs: list[dict]) -> str:
    domains = domains_of(runs)
    names = {"knockout/ratio_min": "KO own/mean other (min)", "knockout/own_3x": "domains with KO own >= 3x any other"}
    ko = [k for k in names if any(k in r for r in runs)]
    cols = ["val loss"] + domains + ["hit rate", "own share", "top-1 own", "NMI", "load CV"] + [names[k] for k in ko]
    cols.append("step (s)")
    rows = ["| arm | seeds | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for arm, rs in by_arm(runs).items():
        cells = [cell(rs, "val/loss")] + [cell(rs, f"val/loss/{d}") for d in domains]
        cells += [cell(rs, k) for k in ("spec/hit_rate", "spec/own_share", "spec/top1_own", "spec/nmi", "spec/load_cv")]
        cells += [cell(rs, k, ".2f") for k in ko]
        cells.append(cell(rs, "step_time_s", ".2f"))
        rows.append(f"| {arm} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + knockout_table(runs)


def knockout_table(runs: list[dict]) -> str:
    """Per arm and expert domain: the loss rise when its own expert is removed over the mean rise when another
    routed expert is removed (`python -m moe_lm.evaluate task=knockout`); empty when no run has a knockout."""
    keys = sorted({k for r in runs for k in r if k.startswith("knockout/ratio/")})
    if not keys:
        return ""
    names = [k.removeprefix("knockout/ratio/") for k in keys]
    rows = ["", "", "knockout: loss rise when a domain's own expert is removed / mean rise when another routed expert "
            "is removed (1 = no specialisation)", "",
            "| arm | runs | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for arm, rs in by_arm(runs).items():
        have = [r for r in rs if any(k in r for k in keys)]
        if have:
            rows.append(f"| {arm} | {len(have)} | " + " | ".join(cell(have, k, ".2f") for k in keys) + " |")
    return "\n".join(rows)


def spec_history(run_dir: Path, key: str = "hit_rate") -> list[tuple[int, float]]:
    """(step, a specialisation score) at every validation of one run."""
    points = []
    for f in sorted((run_dir / "routing").glob("step*.json")):
        rec = json.loads(f.read_text())
        if key in rec.get("spec", {}):
            points.append((rec["step"], rec["spec"][key]))
    return points


def knockout_scores(run_dir: Path) -> dict[str, float]:
    """The knockout ratios of `<run>/knockout/eval.json`, flat (empty when the run has none)."""
    path = run_dir / "knockout" / "eval.json"
    if not path.is_file():
        return {}
    ratios = json.loads(path.read_text())["ratios"]
    means = [r["ratio_mean"] for r in ratios.values() if r["ratio_mean"] is not None]
    maxes = [r["ratio_max"] for r in ratios.values() if r["ratio_max"] is not None]
    out = {f"knockout/ratio/{d}": r["ratio_mean"] for d, r in ratios.items() if r["ratio_mean"] is not None}
    if len(means) == len(ratios) and means:
        out["knockout/ratio_min"] = min(means)
    if len(maxes) == len(ratios) and maxes:
        out["knockout/ratio_max_min"] = min(maxes)
    out["knockout/own_3x"] = sum(bool(r.get("own_3x_any_other")) for r in ratios.values())
    return out


def ablation_plots(runs: list[dict], sweep: Path) -> list[Path]:
    """val loss per domain per arm (bars), and own-expert share over training per arm (lines, mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups, domains = by_arm(runs), domains_of(runs)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(groups)
    for i, (arm, rs) in enumerate(groups.items()):
        vals = [spread([r[f"val/loss/{d}"] for r in rs if f"val/loss/{d}" in r]) for d in domains]
        ax.bar(np.arange(len(domains)) + i * width, [m for m, _ in vals], width, yerr=[s for _, s in vals], label=arm)
    ax.set_xticks(np.arange(len(domains)) + width * (len(groups) - 1) / 2, domains)
    ax.set_ylabel("final val loss (nats/token)")
    ax.set_title("validation loss per domain, per arm (mean over seeds, bars: half range)")
    lo = min(r[f"val/loss/{d}"] for r in runs for d in domains if f"val/loss/{d}" in r)
    ax.set_ylim(bottom=max(0.0, lo - 0.5))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    loss_png = sweep / "val_loss_by_domain.png"
    fig.savefig(loss_png, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for arm, rs in groups.items():
        curves = [dict(spec_history(sweep / r["run"])) for r in rs]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            ax.plot(steps, [mean(c[s] for c in curves) for s in steps], marker="o", label=arm)
    ax.axhline(0.4, color="gray", linestyle="--", linewidth=1, label="uniform (top-2 of 5)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("own-expert hit rate (validation)")
    ax.set_title("do the experts keep their domains?")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    share_png = sweep / "hit_rate.png"
    fig.savefig(share_png, dpi=120)
    plt.close(fig)
    return [loss_png, share_png]
