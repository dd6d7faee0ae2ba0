"""The specialisation ablations' report: arms (dense twin, MoE warm starts) compared over seeds.

Each run's `result.json` says its arm (`dense`, else its `warm_start`: the routing switches' short name,
RoutingConfig.arm, with its top-k, warm-start length and guided coefficient where they differ from the report's)
and holds its final `val/loss/<domain>` and `spec/...` scores; `routing/step*.json` beside it holds the scores at
every validation, and `knockout/eval.json` (from `python -m moe_lm.evaluate task=knockout`), when present, the
causal specialisation ratios. On the held-out split (`data.split=heldout`): `knockout_heldout/eval.json` and
`eval_heldout/eval.json` (task=lm: loss and routing scores). Numbers are the mean over seeds +/- half their range.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Sequence

from moe_lm.eval.spec_goals import goals_table

ARMS = ("dense", "none", "round_robin", "round_robin+guided", "round_robin+guided+window", "guided", "forced",
        "forced_guided", "domain_mean", "guided+domain_mean", "forced+domain_mean")


def _usual(runs: list[dict], key: str):
    """The most common value of `key` among the runs; None when none has it or two values tie."""
    top = Counter(r[key] for r in runs if key in r).most_common(2)
    return None if not top or (len(top) > 1 and top[0][1] == top[1][1]) else top[0][0]


def _warm_start_acts(run: dict) -> bool:
    """Whether the warm start's length changes the run: some switch acts during it (not `none`, the dense twin or a
    router initialisation alone)."""
    r, switches = run.get("routing"), ("warm_batches", "warm_routing", "warm_balance")
    if run.get("dense"):
        return False
    if not isinstance(r, dict) or not all(k in r for k in switches):  # results written before the routing dict
        return run.get("warm_start") != "none"
    return (r["warm_batches"], r["warm_routing"], r["warm_balance"]) != ("mixed", "learned", "batch")


def arm_of(run: dict, runs: Sequence[dict] = ()) -> str:
    """The run's arm: dense, or its warm start's switches, with `top-K`, `N warm steps` and the guided
    coefficient when those differ from the most common values among `runs` (for the warm steps, among the runs
    whose warm start acts; every value is named when two tie; for the coefficient, the guided runs')."""
    if run.get("dense"):
        return "dense"
    name, runs = str(run.get("warm_start")), list(runs) or [run]
    if "top_k" in run and run["top_k"] != _usual(runs, "top_k"):
        name += f", top-{run['top_k']}"
    if _warm_start_acts(run) and "warm_steps" in run \
            and run["warm_steps"] != _usual([r for r in runs if _warm_start_acts(r)], "warm_steps"):
        name += f", {run['warm_steps']} warm steps"
    coefs = {r["routing"]["guided_coef"] for r in runs
             if "guided" in str(r.get("warm_start")) and isinstance(r.get("routing"), dict)}
    if "guided" in name and isinstance(run.get("routing"), dict) and len(coefs) > 1:
        name += f", coef {run['routing']['guided_coef']:g}"
    return name


def is_ablation(runs: list[dict]) -> bool:
    return len({arm_of(r, runs) for r in runs if "warm_start" in r}) > 1


def by_arm(runs: list[dict]) -> dict[str, list[dict]]:
    def order(a: str) -> tuple[int, str]:
        base = a.split(",")[0]
        return (ARMS.index(base) if base in ARMS else len(ARMS), a)

    labels = [arm_of(r, runs) for r in runs]
    return {a: [r for r, b in zip(runs, labels) if b == a] for a in sorted(set(labels), key=order)}


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
    return ("\n".join(rows) + heldout_table(runs) + knockout_table(runs) + knockout_table(runs, "knockout_heldout")
            + goals_table(by_arm(runs)))


def heldout_table(runs: list[dict]) -> str:
    """Per arm, on the held-out split (`evaluate data.split=heldout`, task=lm and task=knockout): loss per domain,
    the routing scores, and the knockout's own / max other (min over the domains) and domains at >= 3x."""
    if not any("eval_heldout/loss" in r for r in runs):
        return ""
    domains = sorted({k.removeprefix("eval_heldout/loss/") for r in runs for k in r if k.startswith("eval_heldout/loss/")})
    keys = (["eval_heldout/loss"] + [f"eval_heldout/loss/{d}" for d in domains]
            + ["eval_heldout/hit_rate", "eval_heldout/top1_own", "eval_heldout/nmi", "knockout_heldout/ratio_max_min",
               "knockout_heldout/own_3x"])
    cols = (["loss"] + domains + ["hit rate", "top-1 own", "NMI", "KO own / max other (min)",
                                  "domains with KO own >= 3x any other"])
    rows = ["", "", "on the held-out split (groups kept out of training)", "",
            "| arm | seeds | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for arm, rs in by_arm(runs).items():
        rows.append(f"| {arm} | {len(rs)} | " + " | ".join(cell(rs, k, ".2f" if k.startswith("knockout") else ".3f")
                                                              for k in keys) + " |")
    return "\n".join(rows)


def knockout_table(runs: list[dict], prefix: str = "knockout") -> str:
    """Per arm and expert domain: the loss rise when its own expert is removed over the mean rise when another
    routed expert is removed (`python -m moe_lm.evaluate task=knockout`); empty when no run has a knockout."""
    keys = sorted({k for r in runs for k in r if k.startswith(f"{prefix}/ratio/")})
    if not keys:
        return ""
    names = [k.removeprefix(f"{prefix}/ratio/") for k in keys]
    split = " (held-out split)" if prefix == "knockout_heldout" else ""
    rows = ["", "", f"knockout{split}: loss rise when a domain's own expert is removed / mean rise when another routed "
            "expert is removed (1 = no specialisation)", "",
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


def knockout_scores(run_dir: Path, folder: str = "knockout") -> dict[str, float]:
    """The knockout ratios of `<run>/<folder>/eval.json` (knockout, or knockout_heldout), flat under `<folder>/`
    (empty when the run has none)."""
    path = run_dir / folder / "eval.json"
    if not path.is_file():
        return {}
    ratios = json.loads(path.read_text())["ratios"]
    means = [r["ratio_mean"] for r in ratios.values() if r["ratio_mean"] is not None]
    maxes = [r["ratio_max"] for r in ratios.values() if r["ratio_max"] is not None]
    out = {f"{folder}/ratio/{d}": r["ratio_mean"] for d, r in ratios.items() if r["ratio_mean"] is not None}
    if len(means) == len(ratios) and means:
        out[f"{folder}/ratio_min"] = min(means)
    if len(maxes) == len(ratios) and maxes:
        out[f"{folder}/ratio_max_min"] = min(maxes)
    out[f"{folder}/own_3x"] = sum(bool(r.get("own_3x_any_other")) for r in ratios.values())
    return out


def heldout_scores(run_dir: Path) -> dict[str, float]:
    """`<run>/eval_heldout/eval.json` (evaluate task=lm data.split=heldout) flat: loss (mean over the domains) and per domain,
    hit rate, top-1 own and NMI (empty when the run has none)."""
    path = run_dir / "eval_heldout" / "eval.json"
    if not path.is_file():
        return {}
    rep = json.loads(path.read_text())
    out = {"eval_heldout/loss": mean(d["loss"] for d in rep["domains"])}  # as val/loss: the domains' mean
    out.update({f"eval_heldout/loss/{d['domain']}": d["loss"] for d in rep["domains"]})
    spec = rep.get("routing", {}).get("specialisation", {})
    out.update({f"eval_heldout/{k}": spec[k] for k in ("hit_rate", "top1_own", "nmi") if k in spec})
    return out


def chance_of(run_dir: Path) -> tuple[int, int] | None:
    """(top_k, routed experts) of a run from the config it wrote (None without one): a router choosing uniformly
    hits a token's own expert top_k / experts of the time."""
    import yaml

    if not (run_dir / "config.yaml").is_file():
        return None
    model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    return int(model["top_k"]), int(model["n_routed_experts"])


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
    chances = {chance_of(sweep / r["run"]) for r in runs if not r.get("dense")} - {None}
    for (k, e), style in zip(sorted(chances, reverse=True), ("--", ":", "-.")):
        ax.axhline(k / e, color="gray", linestyle=style, linewidth=1, label=f"uniform (top-{k} of {e})")
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
