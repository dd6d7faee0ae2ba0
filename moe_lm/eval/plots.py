"""Figures: the routing heatmap and the loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch


def matrix_heatmap(values: torch.Tensor, rows: list[str], experts: Optional[Sequence[Optional[int]]], path: Path,
                   title: str, cmap: str = "viridis", vmin: float = 0.0, vmax: float = 1.0,
                   xlabel: str = "routed expert", ylabel: str = "domain", fmt: str = "{:.2f}",
                   cbar_label: str = "") -> Path:
    """A (rows, experts) matrix as a PNG, each value written in its cell; `experts[r]`, the expert mapped to row
    r (or None), is outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * values.shape[1], 1.0 + 0.5 * len(rows)))
    im = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(values.shape[1]), [f"E{e}" for e in range(values.shape[1])])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for d, e in enumerate(experts or []):
        if e is not None:  # the row's own expert
            ax.add_patch(plt.Rectangle((e - 0.5, d - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    for i in range(values.shape[0]):
        for e in range(values.shape[1]):
            bright = (float(values[i, e]) - vmin) / max(vmax - vmin, 1e-12) > 0.6  # dark text on light cells
            ax.text(e, i, fmt.format(float(values[i, e])), ha="center", va="center", color="k" if bright else "w",
                    fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label=cbar_label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def routing_heatmap(frac: torch.Tensor, domains: list[str], out_dir: str, step: int,
                    experts: Optional[Sequence[Optional[int]]] = None, path: Optional[Path] = None,
                    title: Optional[str] = None, ylabel: str = "domain (validation tokens)") -> Path:
    """frac: (domains, experts) share of each domain's token slots per expert -> PNG path (default
    `<out_dir>/routing/heatmap_step<step>.png`). `experts[d]`, the expert mapped to domain d (or None), is
    outlined in its row."""
    path = path or Path(out_dir) / "routing" / f"heatmap_step{step:07d}.png"
    return matrix_heatmap(frac, domains, experts, path, title or f"share of each domain's tokens per expert (step {step})",
                          vmax=max(0.5, float(frac.max())), ylabel=ylabel)


def loss_curve(train: list[tuple[int, float]], val: dict[str, list[tuple[int, float]]], path: Path,
               title: str) -> None:
    """Train loss per optimizer step, and each validation loss ("val/loss", "val/loss/<domain>") at its steps, on
    log-log axes (early steps and the long tail both readable) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(*zip(*train), color="0.55", linewidth=0.8, label="train")
    for key, points in sorted(val.items()):
        overall = key == "val/loss"
        label = ("val (all domains)" if len(val) > 1 else "val") if overall else f"val {key.split('/')[-1]}"
        ax.plot(*zip(*points), marker="o", markersize=3, linewidth=2.2 if overall else 1.2,
                color="black" if overall else None, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 7.2, not 7.2 x 10^0
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)  # a loss range is often less than a decade: label the minor ticks too
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(val) > 4 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
