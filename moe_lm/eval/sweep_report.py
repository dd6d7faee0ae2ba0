"""Summarise a sweep (the library behind `python -m moe_lm.report dir=SWEEP_DIR`).

Reads every `result.json` below SWEEP_DIR (one per finished run) and writes a markdown table (params,
active params, tokens, wall time, final train and val loss per run) and a plot of val loss against depth,
one line per seq_len; a specialisation ablation gets its own report (moe_lm/eval/ablation.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from moe_lm.config import ConfigError


def load_runs(sweep: Path) -> list[dict]:
    from moe_lm.eval.ablation import heldout_scores, knockout_scores

    runs = []
    for f in sorted(sweep.rglob("result.json")):
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"dir: {f} is not a result.json written by moe_lm.train ({e})") from None
        if not isinstance(r, dict):
            raise ConfigError(f"dir: {f} is not a result.json written by moe_lm.train (not a JSON object)")
        r["run"] = str(f.parent.relative_to(sweep)) or "."
        r.update(knockout_scores(f.parent))  # `python -m moe_lm.evaluate task=knockout` beside it, if run
        r.update(knockout_scores(f.parent, "knockout_heldout"))  # ... with data.split=heldout
        r.update(heldout_scores(f.parent))  # task=lm data.split=heldout
        runs.append(r)
    if not runs:
        raise FileNotFoundError(f"dir: no result.json below {sweep} (did the runs finish?)")
    return sorted(runs, key=lambda r: (r.get("seq_len", 0), r.get("n_layers", 0)))


def table(runs: list[dict]) -> str:
    def num(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) else "-"

    rows = ["| run | n_layers | seq_len | params | active params | tokens | wall (s) | train loss | val loss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        rows.append(f"| {r['run']} | {r.get('n_layers', '-')} | {r.get('seq_len', '-')} | "
                    f"{num(r.get('params'), ',')} | {num(r.get('active_params'), ',')} | {num(r.get('tokens'), ',')} | "
                    f"{num(r.get('wall_s'), '.1f')} | {num(r.get('final_train_loss'), '.3f')} | "
                    f"{num(r.get('val/loss'), '.3f')} |")
    return "\n".join(rows)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for seq in sorted({r.get("seq_len") for r in runs}):
        pts = sorted((r["n_layers"], r["val/loss"]) for r in runs if r.get("seq_len") == seq and "val/loss" in r)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"seq_len {seq}")
    ax.set_xlabel("n_layers")
    ax.set_ylabel("final val loss (nats/token)")
    ax.set_title("depth x context sweep")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(sweep: Path) -> tuple[str, list[Path]]:
    """SWEEP_DIR/report.md and its plots: the architecture ablation's report when the runs differ in their
    architecture switches, the ablation report when they are arms of the specialisation ablation, else the depth x
    seq_len table and val_loss.png. Runs that started but wrote no result.json (failed, stopped or still running)
    are listed under the table: a missing arm is never silent. Returns the markdown and the figures written."""
    from moe_lm.eval.ablation import ablation_plots, ablation_table, is_ablation
    from moe_lm.eval.arch_ablation import arch_plot, arch_table, is_arch_ablation

    runs = load_runs(sweep)
    if is_arch_ablation(runs):
        md, figures = arch_table(runs), [arch_plot(runs, sweep)]
    elif is_ablation(runs):
        md, figures = ablation_table(runs), ablation_plots(runs, sweep)
    else:
        md, figures = table(runs), [sweep / "val_loss.png"]
        plot(runs, figures[0])
    missing = unfinished_runs(sweep)
    if missing:
        md += (f"\n\n**{len(missing)} run(s) without result.json** (failed, stopped or still running; see their "
               f"train.log): " + ", ".join(missing))
    (sweep / "report.md").write_text(md + "\n")
    return md, figures


def unfinished_runs(sweep: Path) -> list[str]:
    """Run directories below the sweep (each holds the config.yaml a run writes first) without a result.json;
    Hydra's own .hydra/config.yaml files are not runs."""
    return sorted(str(f.parent.relative_to(sweep)) for f in sweep.rglob("config.yaml")
                  if not (f.parent / "result.json").exists()
                  and not any(part.startswith(".") for part in f.relative_to(sweep).parts))
