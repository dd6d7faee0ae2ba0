import math

import pytest
import torch
import torch.nn.functional as F

from moe_lm.model.balance import load_balance_loss, router_z_loss
from moe_lm.model.moe import MoE


def naive_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Per-token reference: score, pick top-k, run each chosen expert alone, add the shared expert."""
    cfg = moe.cfg
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        logits = moe.gate.weight @ x[n]
        scores = logits.softmax(-1) if cfg.scoring == "softmax" else logits.sigmoid()
        chosen = (scores + moe.gate.e_score_correction_bias).topk(cfg.top_k).indices
        w = scores[chosen]
        if cfg.norm_topk_prob:
            w = w / w.sum()
        for weight, e in zip(w, chosen.tolist()):
            gate, up = (moe.experts.gate_up_proj[e] @ x[n]).chunk(2)
            out[n] += weight * (moe.experts.down_proj[e] @ (F.silu(gate) * up))
        sh = moe.shared_experts
        out[n] += sh.down_proj.weight @ (F.silu(sh.gate_proj.weight @ x[n]) * (sh.up_proj.weight @ x[n]))
    return out


def _init(moe: MoE) -> MoE:
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    moe.gate.e_score_correction_bias.normal_(0, 0.1)
    return moe


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("norm", [True, False])
def test_vectorised_moe_matches_naive_reference(scoring, norm, make_model_cfg):
    moe = _init(MoE(make_model_cfg(scoring=scoring, norm_topk_prob=norm))).eval()
    x = torch.randn(3, 7, 64)
    y, stats = moe(x)
    ref = naive_moe(moe, x.reshape(-1, 64)).view_as(x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert stats.expert_counts.sum() == 21 * 2  # every token sent to exactly top_k experts


def test_every_expert_that_receives_tokens_receives_gradient(make_model_cfg):
    moe = _init(MoE(make_model_cfg(n_routed_experts=5, top_k=2)))
    x = torch.randn(64, 64)
    y, stats = moe(x)
    y.pow(2).sum().backward()
    for e in range(5):
        got = moe.experts.gate_up_proj.grad[e].abs().sum() > 0 and moe.experts.down_proj.grad[e].abs().sum() > 0
        assert bool(got) == bool(stats.expert_counts[e] > 0), e
    assert moe.gate.weight.grad.abs().sum() > 0  # the router learns through the top-k weights


def test_aux_free_bias_moves_skewed_router_toward_balance(make_model_cfg):
    cfg = make_model_cfg(use_aux_free_bias=True, bias_update_rate=0.01, scoring="sigmoid")
    moe = MoE(cfg)
    torch.nn.init.normal_(moe.gate.weight, std=0.02)
    with torch.no_grad():
        moe.gate.weight[0] += 0.5  # expert 0 wins for inputs with a positive mean
    x = torch.randn(512, 64) + 0.3

    def load_cv() -> float:
        with torch.no_grad():
            _, s = moe(x)
        c = s.expert_counts.float()
        return float(c.std(unbiased=False) / c.mean())

    moe.train()
    before = load_cv()
    moe.tokens_per_expert.zero_()
    for _ in range(200):
        with torch.no_grad():
            moe.record_load(moe(x)[1].expert_counts)
        moe.update_bias(cfg.bias_update_rate)
        assert abs(float(moe.gate.e_score_correction_bias.mean())) < 1e-6  # mean-centred
    after = load_cv()
    assert before > 0.5 and after < before / 3
    assert moe.gate.e_score_correction_bias[0] < 0  # the overloaded expert was pushed down


def test_bias_only_changes_selection_not_weights(make_model_cfg):
    cfg = make_model_cfg(scoring="sigmoid", norm_topk_prob=False)
    moe = _init(MoE(cfg))
    x = torch.randn(10, 64)
    r0 = moe.gate(x)
    moe.gate.e_score_correction_bias.zero_()
    moe.gate.e_score_correction_bias[3] = 10.0  # force expert 3 into every top-k
    r1 = moe.gate(x)
    assert (r1.topk_idx == 3).any(-1).all()
    torch.testing.assert_close(r1.topk_weight, r0.scores.gather(-1, r1.topk_idx))


def test_aux_loss_and_z_loss_on_hand_computed_case():
    # 2 tokens, 2 experts, top-1. Token 0 -> expert 0 (p=0.8), token 1 -> expert 0 (p=0.6).
    scores = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    counts = torch.tensor([2, 0])
    # f = [1, 0]; P = [0.7, 0.3]; loss = E * sum f*P = 2 * 0.7
    assert math.isclose(float(load_balance_loss(scores, counts, top_k=1, scoring="softmax")), 1.4, rel_tol=1e-6)
    # balanced case gives exactly 1
    bal = load_balance_loss(torch.full((4, 2), 0.5), torch.tensor([2, 2]), top_k=1, scoring="softmax")
    assert math.isclose(float(bal), 1.0, rel_tol=1e-6)
    # sigmoid scores are normalised per token before averaging
    sig = load_balance_loss(torch.tensor([[0.9, 0.3]]), torch.tensor([1, 0]), top_k=1, scoring="sigmoid")
    assert math.isclose(float(sig), 2 * 0.75, rel_tol=1e-6)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp = [log 2, log 4]; z = mean of squares
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert math.isclose(float(router_z_loss(logits)), expected, rel_tol=1e-6)


def test_aux_loss_gradient_pushes_probability_off_overloaded_expert():
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = load_balance_loss(logits.softmax(-1), torch.tensor([2, 0]), top_k=1, scoring="softmax")
    loss.backward()
    assert (logits.grad[:, 0] > 0).all()  # gradient descent lowers expert 0's logit


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_masked_tokens_do_not_count_in_loads_losses_or_bias_update(scoring, make_model_cfg):
    torch.manual_seed(0)
    moe = _init(MoE(make_model_cfg(scoring=scoring))).train()
    x = torch.randn(1, 6, moe.cfg.d_model)
    pad = torch.randn(1, 4, moe.cfg.d_model) * 3  # padding that would route somewhere
    y_ref, ref = moe(x)
    moe.record_load(ref.expert_counts)
    load_ref = moe.tokens_per_expert.clone()
    moe.tokens_per_expert.zero_()
    mask = torch.tensor([[True] * 6 + [False] * 4])
    y, got = moe(torch.cat([x, pad], dim=1), token_mask=mask)
    moe.record_load(got.expert_counts)
    torch.testing.assert_close(y[:, :6], y_ref)  # every token is still computed
    assert got.expert_counts.tolist() == ref.expert_counts.float().tolist()
    assert moe.tokens_per_expert.tolist() == load_ref.tolist()
    for name in ("aux_loss", "z_loss", "router_entropy"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name))
    _, unmasked = moe(torch.cat([x, pad], dim=1))
    assert not torch.allclose(unmasked.aux_loss, ref.aux_loss)  # the padding would have changed it
