"""The warm start's switches: batches, routing method (forced), balance scope (window, off) and router init."""

import numpy as np
import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import ConfigError, RoutingConfig
from moe_lm.data.mixture import BatchPlan
from moe_lm.model import MoETransformer
from moe_lm.model.balance import load_balance_loss
from moe_lm.training.router_init import domain_mean_router_inputs, init_router_from_domains

from tests.training.test_guidance import _fit

WARM = ["data.round_robin_steps=40", "data.val_batches_per_domain=2"]


def test_arm_names_say_which_switches_differ_from_no_warm_start():
    assert RoutingConfig(warm_batches="mixed").arm == "none"
    assert RoutingConfig().arm == "round_robin"  # the default: round-robin batches, the router alone
    assert RoutingConfig(warm_routing="guided", warm_balance="window").arm == "round_robin+guided+window"
    assert RoutingConfig(warm_batches="mixed", router_init="domain_mean").arm == "domain_mean"


@pytest.mark.parametrize("override, key", [
    ("routing.warm_routing=forced", "routing.warm_routing"), ("routing.warm_balance=window", "routing.warm_balance"),
    ("routing.router_init=domain_mean", "routing.router_init")])
def test_warm_switches_need_domain_data(override, key):
    with pytest.raises(ConfigError, match=key):
        compose([override])  # the overfit demo's lines: no domains to warm-start on
    with pytest.raises(ConfigError, match="must be one of"):
        compose(["data=domains", "routing.warm_routing=maybe"])


def test_mixed_warm_batches_are_the_batches_of_no_warm_start(make_domains_cfg, tmp_path):
    """warm_batches=mixed feeds the mixture from step 0 (pipelines sets the plan's round-robin phase to 0)."""
    from moe_lm.data.pipelines import dataclasses  # the same replace pipelines does

    cfg = make_domains_cfg(tmp_path, round_robin_steps=5)
    mixed = BatchPlan(dataclasses.replace(cfg, round_robin_steps=0), [500, 500, 500], seed=3)
    rr = BatchPlan(cfg, [500, 500, 500], seed=3)
    assert all(len(set(rr.batch(k)[0])) == 1 for k in range(5))  # one domain per warm-start batch
    assert any(len(set(mixed.batch(k)[0])) > 1 for k in range(5))
    for k in range(5, 9):  # after the warm start both plans are the mixture
        np.testing.assert_array_equal(rr.batch(k)[0], mixed.batch(k)[0])


def test_forced_routing_puts_the_own_expert_in_every_tokens_top_k(tiny_cfg):
    model = MoETransformer(tiny_cfg)
    ids = torch.randint(0, tiny_cfg.vocab_size, (3, 10))
    forced = torch.tensor([2, -1, 4])[:, None].expand(-1, 10)  # sample 1 is free (a domain without an expert)
    free = model(ids)
    out = model(ids, forced_expert=forced)
    topk, topk_free = out.topk_idx.view(-1, 3, 10, 2), free.topk_idx.view(-1, 3, 10, 2)  # (L, B, T, K)
    assert (topk[:, 0] == 2).any(-1).all() and (topk[:, 2] == 4).any(-1).all()
    torch.testing.assert_close(out.logits[1], free.logits[1])  # an unforced sample is routed as before
    assert torch.equal(topk[:, 1], topk_free[:, 1])
    # the other slot is the router's best among the remaining experts
    logits = out.router_logits.view(-1, 3, 10, tiny_cfg.n_routed_experts)[:, 0]  # (L, T, E)
    scores = logits.sigmoid() + torch.stack([m.gate.e_score_correction_bias for m in model.moe_layers()])[:, None]
    scores[..., 2] = -1
    other = topk[:, 0].masked_fill(topk[:, 0] == 2, -1).max(-1).values
    assert torch.equal(other, scores.argmax(-1))


def test_balance_window_averages_the_slot_shares_of_earlier_batches():
    scores = torch.rand(6, 4)
    counts = torch.tensor([6, 0, 0, 6])  # this batch: experts 0 and 3 only (6 tokens x top-2)
    earlier = torch.tensor([0.0, 0.5, 0.5, 0.0]) * 2  # two earlier batches, both on experts 1 and 2
    got = load_balance_loss(scores, counts, 2, "softmax", prior=(earlier, 2))
    f = (torch.tensor([0.5, 0, 0, 0.5]) + earlier) / 3
    torch.testing.assert_close(got, 4 * (f * scores.mean(0)).sum())


def test_balance_off_freezes_the_router_bias_during_the_warm_start(fake_shards):
    trainer, _ = _fit(fake_shards, "data.round_robin_steps=6", "routing.warm_balance=off", steps=6)
    model = trainer.lightning_module.model
    assert all(float(m.gate.e_score_correction_bias.abs().max()) == 0 for m in model.moe_layers())
    trainer, _ = _fit(fake_shards, "data.round_robin_steps=6", steps=6)  # per-batch balance moves it
    assert any(float(m.gate.e_score_correction_bias.abs().max()) > 0 for m in trainer.lightning_module.model.moe_layers())


def test_balance_window_holds_the_cycle_and_resumes_exactly(tmp_path, fake_shards):
    """With round-robin batches of 5 expert domains, the window holds the last 5 steps' loads; it is saved in the
    checkpoint, so a run resumed inside the warm start continues bit for bit; after the warm start it is empty."""
    args = ["data.round_robin_steps=8", "routing.warm_balance=window"]
    torch.manual_seed(0)
    trainer, full = _fit(fake_shards, *args, steps=7)
    module = trainer.lightning_module
    assert len(module.load_window) == 5 and module.load_window.maxlen == 5
    torch.manual_seed(0)
    trainer, _ = _fit(fake_shards, *args, steps=3)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    torch.manual_seed(99)
    resumed_trainer, resumed = _fit(fake_shards, *args, steps=7, ckpt_in=str(tmp_path / "step3.ckpt"))
    assert [b for _, b in resumed] == pytest.approx([b for _, b in full], abs=1e-6)
    for a, b in zip(module.model.moe_layers(), resumed_trainer.lightning_module.model.moe_layers()):
        assert torch.equal(a.gate.e_score_correction_bias, b.gate.e_score_correction_bias)
    trainer, _ = _fit(fake_shards, *args, steps=10)
    assert len(trainer.lightning_module.load_window) == 0


def test_forced_warm_start_routes_every_expert_domain_token_to_its_expert(fake_shards):
    """In the warm start's training batches the own expert holds exactly one of a token's two slots (half the
    domain's slots); without forcing the router and the balancer decide."""
    experts = {"math": 0, "code": 1, "science": 2, "legal": 3, "chat": 4}

    def own_loads(trainer):
        return {d: float(trainer.callback_metrics[f"moe/domain_load/{d}/expert{e}"]) for d, e in experts.items()
                if f"moe/domain_load/{d}/expert{e}" in trainer.callback_metrics}

    forced, _ = _fit(fake_shards, *WARM, "routing.warm_routing=forced", monitor=True, steps=12)
    control, _ = _fit(fake_shards, *WARM, monitor=True, steps=12)
    assert own_loads(forced) and all(v == 0.5 for v in own_loads(forced).values()), own_loads(forced)
    assert all(v < 0.5 for v in own_loads(control).values()), own_loads(control)


def test_domain_mean_rows_point_at_what_sets_each_domain_apart(tiny_cfg):
    model = MoETransformer(tiny_cfg)
    norms = [m.gate.weight.norm(dim=1).mean() for m in model.moe_layers()]
    batches = [(d, torch.randint(d * 20, d * 20 + 20, (2, 12))) for d in range(3) for _ in range(2)]
    means = domain_mean_router_inputs(model, batches, 3)  # (L, D, C)
    info = init_router_from_domains(model, means, [0, 3, None])  # the third domain has no expert
    assert info["experts"] == [0, 3]
    for layer, (moe, norm) in enumerate(zip(model.moe_layers(), norms)):
        centred = means[layer] - means[layer].mean(0)
        for d, e in ((0, 0), (1, 3)):
            torch.testing.assert_close(moe.gate.weight[e].double(), (centred[d] / centred[d].norm() * norm).double(),
                                       rtol=1e-5, atol=1e-6)
    # each domain's mean input scores highest on its own expert among the initialised rows
    logits = torch.einsum("ldc,lec->lde", means.float(), torch.stack([m.gate.weight for m in model.moe_layers()])[:, [0, 3]])
    assert torch.equal(logits[:, :2].argmax(-1), torch.tensor([[0, 1]] * logits.shape[0]))


def test_domain_mean_init_runs_on_a_fresh_run_and_not_on_resume(tmp_path, fake_shards, monkeypatch):
    from moe_lm.training import lit_module

    calls = []
    real = lit_module.MoELitModule._init_router
    monkeypatch.setattr(lit_module.MoELitModule, "_init_router", lambda self: (calls.append(1), real(self)))
    trainer, _ = _fit(fake_shards, "routing.router_init=domain_mean", "routing.warm_batches=mixed", steps=2)
    assert calls == [1]
    trainer.save_checkpoint(tmp_path / "s2.ckpt")
    _fit(fake_shards, "routing.router_init=domain_mean", "routing.warm_batches=mixed", steps=3,
         ckpt_in=str(tmp_path / "s2.ckpt"))
    assert calls == [1]  # the resumed run keeps the checkpoint's router rows
