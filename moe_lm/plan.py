"""Compute planning: `python -m moe_lm.plan gpu=T4 hours=10 [mfu=0.35] [model=moe_100m] [flops=1e19]`, or
`python -m moe_lm.plan recipe=recipe_t4` (what a recipe of conf/experiment/ costs: moe_lm/eval/recipe_plan.py).

Prints the FLOPs the budget buys, the compute-optimal number of active parameters and tokens for it
(Chinchilla-style, `tokens_per_param` tokens per active parameter), and a ladder of models of the `model`
family around that point with their parameters, tokens, training FLOPs, hours on the device and training
memory (moe_lm/eval/compute_plan.py).
"""

from __future__ import annotations

from typing import Sequence

from moe_lm.cli import run_command
from moe_lm.config import PlanConfig

EXAMPLE = "python -m moe_lm.plan gpu=T4 hours=10"


def main(cfg: PlanConfig) -> None:
    if cfg.recipe:
        from moe_lm.cli import compose
        from moe_lm.eval.recipe_plan import recipe_plan, recipe_table

        print(recipe_table(cfg.recipe, recipe_plan(compose([f"+experiment={cfg.recipe}"]))))
        return
    from moe_lm.eval.compute_plan import plan, plan_table

    print(plan_table(cfg, plan(cfg)))


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "plan", __doc__, argv=argv, example=EXAMPLE)


if __name__ == "__main__":
    cli()
