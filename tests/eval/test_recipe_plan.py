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


def test_plan_prints_a_recipe_with_measured_or_derived_hours(capsys):
    cli(["recipe=recipe_h100"])
    out = capsys.readouterr().out
    assert "1,800 steps of 32,768 tokens" in out and "| T4 | NO" in out and "not measured on T4" in out
    # 59M tokens at the 150k tokens/s measured on an H100 (compiled, at micro-batch 8: said so)
    assert "| H100 | yes (72.0) | 150,398 | 8.0% | 0.11 | measured |" in out and "not 32" in out
    assert "| A100 | yes (36.0) | " in out and out.count("| derived |") == 2
    cli(["recipe=recipe_t4"])  # eager: the eager measurements, 2.2x slower
    assert "| H100 | yes (72.0) | 68,482 | 3.6% | 0.24 | measured |" in capsys.readouterr().out


def test_a_derived_range_spans_the_compute_and_the_bandwidth_bound(monkeypatch):
    import moe_lm.eval.throughput as tp
    from moe_lm.model.counting import MEMORY_BANDWIDTH_GBPS, PEAK_FLOPS

    h100 = next(m for m in tp.measurements() if m["device"] == "H100" and m["compiled"])
    monkeypatch.setattr(tp, "measurements", lambda: (h100,))  # one reference: the bounds are its two scalings
    s = tp.speed("A100", "moe_100m", h100["flops_per_token"], 8, True)
    by_flops = h100["tokens_per_s"] * PEAK_FLOPS["A100"] / PEAK_FLOPS["H100"]
    by_bandwidth = h100["tokens_per_s"] * MEMORY_BANDWIDTH_GBPS["A100"] / MEMORY_BANDWIDTH_GBPS["H100"]
    assert s.tokens_per_s == pytest.approx((min(by_flops, by_bandwidth), max(by_flops, by_bandwidth)))
    assert not s.measured and s.label == "derived"
    other = tp.speed("H100", "dense_100m", h100["flops_per_token"] / 2, 8, True)  # another model: the device's MFU
    assert other.tokens_per_s == pytest.approx((2 * h100["tokens_per_s"],) * 2) and not other.measured
