"""The compute planner: the budget, the compute-optimal point, and a ladder of real model sizes around it."""

import math

import pytest

from moe_lm.cli import compose
from moe_lm.config import ConfigError
from moe_lm.eval.compute_plan import plan, plan_table, scaled_model
from moe_lm.model.counting import PEAK_FLOPS


def test_budget_and_compute_optimal_point():
    cfg = compose(["gpu=T4", "hours=10", "mfu=0.4"], "plan")
    p = plan(cfg)
    assert p["budget_flops"] == pytest.approx((PEAK_FLOPS["T4"] * 0.4 * 10 * 3600,) * 2)  # a given MFU: one value
    assert 6 * p["n_opt"] * p["d_opt"] == pytest.approx(p["budget_flops"][0])  # C = 6 N D
    assert p["d_opt"] == pytest.approx(20 * p["n_opt"])
    actives = [r["active"] for r in p["rows"]]
    assert actives == sorted(actives) and len(actives) == 7
    best = next(r for r in p["rows"] if r["d_model"] == p["best_d_model"])
    assert all(abs(math.log(best["active"] / p["n_opt"])) <= abs(math.log(a / p["n_opt"])) for a in actives)
    for r in p["rows"]:  # each size's hours are its compute-optimal tokens' FLOPs on the device
        assert r["tokens"] == pytest.approx(20 * r["active"])
        assert r["hours"] == pytest.approx((r["flops"] / (PEAK_FLOPS["T4"] * 0.4) / 3600,) * 2)
    table = plan_table(cfg, p)
    assert "**<-**" in table and "(> 16 GiB)" in table  # the T4's memory limit is checked


def test_a_flops_budget_and_a_bigger_one_moves_the_optimum_up():
    small = plan(compose(["flops=1e18"], "plan"))
    big = plan(compose(["flops=1e20"], "plan"))
    assert big["n_opt"] == pytest.approx(10 * small["n_opt"])  # N_opt ~ sqrt(C)
    assert big["best_d_model"] > small["best_d_model"]


def test_the_ladder_keeps_the_family_shape():
    base = compose([], "plan").model
    wide = scaled_model(base, 1024)
    assert (wide.n_heads, wide.n_layers, wide.n_routed_experts, wide.top_k) == (16, 24, 5, 2)
    assert wide.moe_intermediate_size == 2 * base.moe_intermediate_size and wide.qk_nope_head_dim == 64


def test_unknown_device_is_named():
    with pytest.raises(ConfigError, match=r"gpu: unknown device 'K80'"):
        plan(compose(["gpu=K80"], "plan"))


@pytest.mark.parametrize("flops,side", [(1.0, "below"), (1e40, "above"), (8.19e17, None)])
def test_a_budget_off_the_ladder_says_so(flops, side):
    cfg = compose([f"flops={flops}"], "plan")
    p = plan(cfg)
    assert p["off_ladder"] == side
    table = plan_table(cfg, p)
    warned = "warning: the compute-optimal size is" in table
    assert warned == (side is not None)
    if side:
        assert f"is {side} the ladder of this model family" in table.splitlines()[1]


def test_without_an_mfu_the_budget_uses_the_measured_one_or_a_derived_range():
    """H100: moe_100m's compiled step was measured there, so one MFU; T4: never measured, so a range between the
    measured MFU (compute-bound) and that MFU scaled by bandwidth over peak (memory-bound), labelled derived."""
    from moe_lm.eval.throughput import measured_mfu, measurements

    h100 = plan(compose(["gpu=H100", "hours=1", "seq_len=1024", "batch_size=8"], "plan"))
    row = next(m for m in measurements() if m["device"] == "H100" and m["compiled"] and m["batch"] == 8)
    assert h100["mfu"] == pytest.approx((measured_mfu(row),) * 2) and h100["mfu_basis"].startswith("measured")
    t4 = plan(compose(["gpu=T4", "hours=1"], "plan"))
    lo, hi = t4["mfu"]
    assert lo < hi and t4["mfu_basis"].startswith("derived") and "not measured on T4" in t4["mfu_basis"]
    assert t4["budget_flops"][0] < t4["budget_flops"][1]
    assert all(r["hours"][0] < r["hours"][1] for r in t4["rows"])
