"""Scaling laws fitted to a sweep (the library behind `python -m moe_lm.scaling dir=SWEEP_DIR`).

L(N, D) = E + A / N^alpha + B / D^beta, N parameters and D training tokens, fitted as in the Chinchilla paper's
approach 3 (Hoffmann et al. 2022, appendix D.2): minimise the Huber loss (delta 1e-3) between
log L and LSE(a - alpha log N, b - beta log D, e), with A = e^a, B = e^b, E = e^e, by L-BFGS from a grid of
starting points (the best of a coarse grid), keeping the best. When only N varies (or only D), the one-variable
law E + A / N^alpha is fitted the same way. Intervals: the 2.5 and 97.5 percentiles of the exponents refitted on bootstrap resamples
of the runs. For a budget of C FLOPs (C = 6 N D) the law's optimum is N_opt = G (C/6)^(beta/(alpha+beta)),
D_opt = (C/6) / N_opt, with G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

HUBER_DELTA = 1e-3


@dataclass
class Law:
    E: float
    A: float
    alpha: float
    B: float = 0.0  # 0 for the one-variable law
    beta: float = 0.0
    objective: float = math.inf
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def loss(self, n: float, d: float = math.inf) -> float:
        return self.E + self.A / n ** self.alpha + (self.B / d ** self.beta if self.B else 0.0)

    def optimum(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L under C = 6 N D."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * (flops / 6) ** (self.beta / (self.alpha + self.beta))
        return n, flops / 6 / n

    def describe(self) -> str:
        two = f" + {self.B:.4g} / D^{self.beta:.3f}" if self.B else ""
        return f"L = {self.E:.4g} + {self.A:.4g} / N^{self.alpha:.3f}{two}"


def _objective(theta: torch.Tensor, log_n: torch.Tensor, log_d: Optional[torch.Tensor], log_l: torch.Tensor):
    """Sum of Huber losses; theta = (a, alpha, e) or (a, alpha, e, b, beta)."""
    terms = [theta[0] - theta[1] * log_n, theta[2].expand_as(log_n)]
    if log_d is not None:
        terms.append(theta[3] - theta[4] * log_d)
    pred = torch.logsumexp(torch.stack(terms), dim=0)
    return torch.nn.functional.huber_loss(pred, log_l, delta=HUBER_DELTA, reduction="sum")


def _minimise(theta0: Sequence[float], log_n, log_d, log_l, steps: int = 100) -> tuple[float, torch.Tensor]:
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        value = _objective(theta, log_n, log_d, log_l)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        value = float(_objective(theta, log_n, log_d, log_l))
    return (value if math.isfinite(value) else math.inf), theta.detach()


def _starts(log_n, log_d, log_l, keep: int = 8) -> list[list[float]]:
    """The `keep` best points of a grid of (a, alpha, e[, b, beta]) by objective value: L-BFGS starts from each."""
    a = (0.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0)
    exps = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0)
    e = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
    axes = (a, exps, e) if log_d is None else (a, exps, e, a, exps)
    grid = torch.tensor(list(itertools.product(*axes)), dtype=torch.float64)  # (G, 3 or 5)
    values = torch.stack([_objective(t, log_n, log_d, log_l) for t in grid])
    return grid[values.argsort()[:keep]].tolist()


def _to_law(theta: torch.Tensor, value: float) -> Law:
    t = theta.tolist()
    if len(t) == 3:
        return Law(E=math.exp(t[2]), A=math.exp(t[0]), alpha=t[1], objective=value)
    return Law(E=math.exp(t[2]), A=math.exp(t[0]), alpha=t[1], B=math.exp(t[3]), beta=t[4], objective=value)


def fit(n: Sequence[float], loss: Sequence[float], d: Optional[Sequence[float]] = None, bootstrap: int = 0,
        seed: int = 0) -> Law:
    """The law through the points (n[i], d[i], loss[i]); d=None for the one-variable law in n."""
    if len(n) < (5 if d is not None else 3):
        raise ValueError(f"{len(n)} runs are too few to fit a {'two' if d is not None else 'one'}-variable law")
    log_n = torch.tensor(n, dtype=torch.float64).log()
    log_d = None if d is None else torch.tensor(d, dtype=torch.float64).log()
    log_l = torch.tensor(loss, dtype=torch.float64).log()
    starts = _starts(log_n, log_d, log_l)
    value, theta = min((_minimise(t0, log_n, log_d, log_l) for t0 in starts), key=lambda r: r[0])
    law = _to_law(theta, value)
    if bootstrap:
        law.intervals = _bootstrap(theta, log_n, log_d, log_l, bootstrap, seed)
    return law


def _bootstrap(theta, log_n, log_d, log_l, samples: int, seed: int) -> dict[str, tuple[float, float]]:
    """2.5 and 97.5 percentiles of the exponents over resamples of the runs. A resample with fewer distinct sizes
    than the law has parameters identifies nothing and is drawn again; with too few usable resamples (a sweep too
    small to resample) there is no interval."""
    gen = torch.Generator().manual_seed(seed)
    fits, need = [], 3 if log_d is None else 5
    for _ in range(samples * 5):
        if len(fits) == samples:
            break
        idx = torch.randint(0, len(log_l), (len(log_l),), generator=gen)
        points = set(zip(log_n[idx].tolist(), [0.0] * len(idx) if log_d is None else log_d[idx].tolist()))
        if len({p[0] for p in points}) < (3 if log_d is None else 2) or len(points) < need:
            continue
        _, t = _minimise(theta.tolist(), log_n[idx], None if log_d is None else log_d[idx], log_l[idx])
        fits.append(t)
    if len(fits) < samples // 2:
        return {}
    stacked = torch.stack(fits)
    names = {1: "alpha", 4: "beta"}
    return {name: (float(stacked[:, i].quantile(0.025)), float(stacked[:, i].quantile(0.975)))
            for i, name in names.items() if i < stacked.shape[1]}


def sweep_points(runs: list[dict], params: str, loss_key: str) -> list[tuple[float, float, float, str]]:
    """(N, D, loss, run name) of every finished run that logged `loss_key`."""
    n_key = "active_params" if params == "active" else "params"
    points = [(float(r[n_key]), float(r["tokens"]), float(r[loss_key]), r["run"]) for r in runs
              if all(isinstance(r.get(k), (int, float)) for k in (n_key, "tokens", loss_key))]
    if not points:
        raise ValueError(f"no run has {n_key}, tokens and {loss_key!r} in its result.json")
    return sorted(points)


def fit_sweep(points: list[tuple[float, float, float, str]], bootstrap: int, seed: int) -> tuple[Law, str]:
    """(law, which law was fitted and why). The two-variable law when N and D vary independently across at least
    5 runs; else the one-variable law in N, which needs at least 3 distinct sizes. A sweep that cannot identify
    the law's parameters is refused (ValueError), and one whose D varies without identifying B and beta says that
    the fit ignores D."""
    n, d, loss = ([p[i] for p in points] for i in range(3))
    sizes, token_counts = len(set(n)), len(set(d))
    ratios = {round(y / x, 9) for x, y in zip(n, d)}
    if sizes > 1 and token_counts > 1 and len(ratios) > 1 and len(set(zip(n, d))) >= 5:
        return (fit(n, loss, d, bootstrap=bootstrap, seed=seed),
                f"two-variable law L(N, D): {sizes} sizes and {token_counts} token counts, not in one ratio")
    if sizes < 3:
        raise ValueError(f"the runs have {sizes} distinct size{'s' if sizes > 1 else ''} N; the law "
                         f"E + A / N^alpha has three parameters and needs at least 3 sizes (a sweep over model.* "
                         f"widths, e.g. +experiment=scaling_ladder)")
    if token_counts == 1:
        why = f"one-variable law L(N): every run saw the same {d[0]:,.0f} tokens"
    elif len(ratios) == 1:
        why = f"one-variable law L(N): D moves with N (D = {d[0] / n[0]:.3g} N in every run), so B and beta are not identified"
    else:
        why = (f"one-variable law L(N), IGNORING D: D varies across the runs ({min(d):,.0f}-{max(d):,.0f} tokens) "
               f"but {len(set(zip(n, d)))} distinct (N, D) points are too few for the two-variable law (5 needed); "
               f"runs with different D get the same fitted value")
    return fit(n, loss, bootstrap=bootstrap, seed=seed), why


def scaling_plot(points: list[tuple[float, float, float, str]], law: Law, path, title: str,
                 predicted: Sequence[tuple[float, float, float]] = ()) -> None:
    """Loss against N: the runs, the fitted law along the sweep's tokens-per-parameter, and predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n, d, loss = ([p[i] for p in points] for i in range(3))
    ax.scatter(n, loss, color="black", zorder=3, label="runs")
    ratio = sorted(x / y for x, y in zip(d, n))[len(n) // 2]
    lo, hi = min(n + [p[0] for p in predicted]), max(n + [p[0] for p in predicted])
    xs = [lo * (hi / lo * 1.5) ** (i / 99) / 1.2 for i in range(100)]
    ax.plot(xs, [law.loss(x, ratio * x) for x in xs], label=law.describe() + (f", D = {ratio:.3g} N" if law.B else ""))
    for x, dx, y in predicted:
        ax.scatter([x], [y], marker="*", s=120, color="tab:red", zorder=4, label=f"predicted at N={x:.3g}")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
