import subprocess
import sys

import pytest

from moe_lm.cli import compose
from moe_lm.model import MoETransformer
from moe_lm.model.counting import param_breakdown, train_flops_per_token


@pytest.fixture(scope="module")
def moe_100m():
    cfg = compose(["model=moe_100m"]).model
    return cfg, param_breakdown(MoETransformer(cfg), cfg)


def test_moe_100m_parameter_targets(moe_100m):
    cfg, p = moe_100m
    assert p["total"] >= 100e6
    assert abs(p["dense_total"] - 50e6) <= 0.05 * 50e6
    for e in range(5):
        assert abs(p[f"routed_expert_{e}"] - 10e6) <= 0.10 * 10e6
    assert p["total"] == sum(x.numel() for x in MoETransformer(cfg).parameters())


def test_active_params_and_flops(moe_100m):
    cfg, p = moe_100m
    expert = p["routed_expert_0"]
    assert p["active_per_token"] == p["dense_total"] + cfg.top_k * expert
    flops = train_flops_per_token(cfg, p, 256)
    assert 6 * (p["active_per_token"] - p["norms"]) < flops < 6 * p["active_per_token"] * 1.2


def test_params_cli_prints_table():
    out = subprocess.run([sys.executable, "-m", "moe_lm.params", "model=moe_tiny"], capture_output=True, text=True,
                         check=True).stdout
    for row in ("embeddings", "attention", "shared_experts", "router", "routed_expert_4", "norms", "total",
                "active_per_token", "train FLOPs/token"):
        assert row in out
