"""Specialisation scores on hand-built routing tables."""

import math

import pytest
import torch

from moe_lm.eval.specialisation import normalised_mutual_information, specialisation_metrics

DOMAINS = ["math", "code", "science", "legal", "chat", "web"]
EXPERTS = [0, 1, 2, 3, 4, None]


def table(rows: list[list[float]], layers: int = 2) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)[None].expand(layers, -1, -1).clone()  # (L, D, E)


def test_perfect_specialisation_scores_one():
    eye = [[100.0 if e == d else 0.0 for e in range(5)] for d in range(5)] + [[20.0] * 5]  # web spreads
    m = specialisation_metrics(table(eye), table(eye), DOMAINS, EXPERTS)
    assert m["own_share"] == pytest.approx(1.0) and m["top1_own"] == pytest.approx(1.0)
    assert m["nmi"] == pytest.approx(1.0)  # over the expert domains: web has no expert and is left out
    assert m["entropy/math"] == pytest.approx(0.0) and m["entropy/web"] == pytest.approx(math.log(5))
    assert m["load_cv"] == pytest.approx(0.0)
    assert m["load_cv/math"] == pytest.approx(2.0) and m["load_cv/web"] == pytest.approx(0.0)  # one-hot row: std 0.4
    assert set(m) >= {"own_share/math", "top1_own/chat", "own_share/layer1", "nmi/layer0"}


def test_uniform_routing_scores_chance():
    uniform = [[30.0] * 5 for _ in range(6)]
    m = specialisation_metrics(table(uniform), table(uniform), DOMAINS, EXPERTS)
    assert m["own_share"] == pytest.approx(0.2) and m["top1_own"] == pytest.approx(0.2)
    assert m["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert m["entropy/code"] == pytest.approx(math.log(5))


def test_a_permuted_map_has_high_nmi_but_no_own_share():
    shifted = [[100.0 if e == (d + 1) % 5 else 0.0 for e in range(5)] for d in range(5)] + [[1.0] * 5]
    m = specialisation_metrics(table(shifted), table(shifted), DOMAINS, EXPERTS)
    assert m["own_share"] == 0.0 and m["nmi"] == pytest.approx(1.0)


def test_nmi_of_a_partial_dependence_is_between_zero_and_one():
    joint = torch.tensor([[8.0, 2.0], [2.0, 8.0]])
    p = joint / joint.sum()
    mi = sum(float(p[i, j] * torch.log(p[i, j] / (p[i].sum() * p[:, j].sum()))) for i in range(2) for j in range(2))
    assert float(normalised_mutual_information(joint)) == pytest.approx(mi / math.log(2))


def test_hit_rate_counts_the_tokens_whose_top_k_holds_their_expert():
    """Top-2 over 5 experts: 10 math tokens, 6 of which put one slot on expert 0 (20 slots, 10 top-1 choices)."""
    slots = [[6.0, 4.0, 4.0, 3.0, 3.0]] + [[4.0] * 5 for _ in range(5)]  # every other domain: uniform, 20 slots
    top1 = [[5.0, 2.0, 1.0, 1.0, 1.0]] + [[2.0] * 5 for _ in range(5)]  # 10 tokens each
    m = specialisation_metrics(table(slots), table(top1), DOMAINS, EXPERTS)
    assert m["hit_rate/math"] == pytest.approx(0.6) and m["own_share/math"] == pytest.approx(0.3)
    assert m["hit_rate/code"] == pytest.approx(0.4)  # uniform top-2 of 5: K / E
    assert m["hit_rate"] == pytest.approx((0.6 + 4 * 0.4) / 5)
    assert "hit_rate/web" not in m  # no expert
