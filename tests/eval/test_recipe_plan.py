"""Every recipe composes, fits the memory of the GPU it is written for (by the plan's estimate), and `plan`
prints it."""

import pytest

from moe_lm.cli import compose
from moe_lm.eval.recipe_plan import recipe_plan
from moe_lm.plan import cli

RECIPES = {"recipe_t4": ("T4", "fp16", False), "recipe_a100": ("A100", "bf16", True),
           "recipe_h100": ("H100", "bf16", True)}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_recipe_fits_its_gpu_and_trains_the_same_tokens(name):
    gpu, precision, compiled = RECIPES[name]
    cfg = compose([f"+experiment={name}"])
    p = recipe_plan(cfg)
    assert cfg.model.name == "moe_100m" and cfg.data.source == "hub" and cfg.precision.name == precision
    assert cfg.trainer.compile == compiled and cfg.checkpoint.resume == "auto" and cfg.checkpoint.every_minutes > 0
    assert p["memory_gib"] + p["logits_gib"] < p["gpus"][gpu]["memory_limit_gib"]
    assert p["tokens_per_step"] == 32 * 1024 and p["steps"] * p["tokens_per_step"] == p["tokens"]
    assert all(b >= 5_000_000 for b in p["budgets"].values())
    assert 1 <= p["passes"] <= 3


def test_plan_prints_a_recipe_with_measured_or_not_measured_hours(capsys):
    cli(["recipe=recipe_t4"])
    out = capsys.readouterr().out
    assert "1,800 steps of 32,768 tokens" in out and "| T4 | yes" in out and "not measured" in out
    assert "| H100 | yes (72.0) | 0.11 |" in out  # 59M tokens at the measured 150k tokens/s
