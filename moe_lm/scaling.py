"""Fit a scaling law to a sweep: `python -m moe_lm.scaling dir=SWEEP_DIR [budget=1e18] [predict=[2e6]]`.

Reads every result.json below SWEEP_DIR and fits L(N, D) = E + A / N^alpha + B / D^beta (or L(N) = E + A / N^alpha
when only N varies, or N and D vary together) to N = active (or total) parameters, D = training tokens and the
final `loss` (moe_lm/eval/scaling_law.py). Prints the runs, the law with 95% bootstrap intervals on its
exponents, the compute-optimal N and D for `budget`, and the loss it predicts for each N of `predict`; writes
SWEEP_DIR/scaling.png and SWEEP_DIR/scaling.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from moe_lm.cli import run_command
from moe_lm.config import ConfigError, ScalingConfig

EXAMPLE = "python -m moe_lm.scaling dir=runs/scaling_ladder budget=1e17 predict=[3e6]"


def main(cfg: ScalingConfig) -> None:
    from moe_lm.eval.scaling_law import fit_sweep, scaling_plot, sweep_points
    from moe_lm.eval.sweep_report import load_runs

    sweep = Path(cfg.dir)
    try:
        points = sweep_points(load_runs(sweep), cfg.params, cfg.loss)
        law, why = fit_sweep(points, cfg.bootstrap, cfg.seed)
    except ValueError as e:
        raise ConfigError(f"dir: {sweep}: {e}") from None
    print(f"fitted: {why}\n")
    ratio = cfg.tokens_per_param or sorted(d / n for n, d, _, _ in points)[len(points) // 2]
    print("| run | N | D (tokens) | loss | fitted |\n|---|---:|---:|---:|---:|")
    for n, d, loss, run in points:
        print(f"| {run} | {n:,.0f} | {d:,.0f} | {loss:.4f} | {law.loss(n, d):.4f} |")
    ci = "".join(f"; {k} 95% [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in law.intervals.items())
    if cfg.bootstrap and not law.intervals:
        ci = f"; no interval: too few runs to resample ({len(points)})"
    print(f"\n{law.describe()}{ci} (N = {cfg.params} parameters, {len(points)} runs)")
    result = {"law": {k: getattr(law, k) for k in ("E", "A", "alpha", "B", "beta")}, "intervals": law.intervals,
              "fitted": why, "runs": [dict(zip(("N", "D", "loss", "run"), p)) for p in points], "predictions": []}
    if cfg.budget and law.B:
        n_opt, d_opt = law.optimum(cfg.budget)
        if n_opt < 1 or d_opt < 1:
            raise ConfigError(f"budget: {cfg.budget:.3g} FLOPs buys less than one parameter trained on one token "
                              f"under this law (N = {n_opt:.3g}, D = {d_opt:.3g}); give a larger budget")
        span = max(n_opt / max(p[0] for p in points), min(p[0] for p in points) / n_opt)
        far = f" (warning: {span:.0f}x outside the sweep's sizes: an extrapolation)" if span > 10 else ""
        print(f"compute-optimal for {cfg.budget:.3g} FLOPs: N = {n_opt:,.0f}, D = {d_opt:,.0f} tokens{far}")
        result["optimum"] = {"flops": cfg.budget, "N": n_opt, "D": d_opt}
    elif cfg.budget:
        print("budget: no compute-optimal split from a one-variable law (N and D did not vary independently in this "
              "sweep); add runs of one size on more or fewer tokens")
    for n in cfg.predict:
        pred = law.loss(n, ratio * n)
        print(f"predicted loss at N = {n:,.0f}, D = {ratio * n:,.0f}: {pred:.4f}")
        result["predictions"].append({"N": n, "D": ratio * n, "loss": pred})
    scaling_plot(points, law, sweep / "scaling.png", f"scaling law: {sweep.resolve().parent.name}/{sweep.name}",
                 [(p["N"], p["D"], p["loss"]) for p in result["predictions"]])
    (sweep / "scaling.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {sweep / 'scaling.png'} and {sweep / 'scaling.json'}")


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "scaling", __doc__, argv=argv, example=EXAMPLE)


if __name__ == "__main__":
    cli()
