"""The guided warm start: the router supervision term, its annealed weight, and what it does to routing."""

import lightning as L
import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import RoutingConfig
from moe_lm.data.shards import DomainDataModule
from moe_lm.training.callbacks import LossCurve
from moe_lm.training.checkpointing import RunState
from moe_lm.training.guidance import expert_targets, guided_coef, router_supervision_loss
from moe_lm.training.lit_module import MoELitModule
from moe_lm.training.routing_monitor import RoutingMonitor


def test_coefficient_anneals_to_exactly_zero_at_the_end_of_the_warm_start():
    lin = RoutingConfig(warm_routing="guided", guided_coef=0.5, guided_anneal="linear")
    assert [guided_coef(lin, s, 10) for s in (0, 5, 9, 10, 11, 1000)] == [0.5, 0.25, pytest.approx(0.05), 0, 0, 0]
    cos = RoutingConfig(warm_routing="guided", guided_coef=0.5, guided_anneal="cosine")
    assert guided_coef(cos, 0, 10) == 0.5 and guided_coef(cos, 5, 10) == pytest.approx(0.25)
    assert guided_coef(cos, 10, 10) == 0.0
    assert guided_coef(RoutingConfig(warm_routing="learned"), 0, 10) == 0.0  # only the guided mode has it


def test_supervision_loss_is_the_cross_entropy_toward_each_domains_expert():
    logits = torch.randn(2, 6, 3)  # (L, N=B*T, E) with B=2 samples of T=3 tokens
    domain = torch.tensor([0, 1])
    targets = expert_targets([2, None])  # domain 0 -> expert 2; domain 1 has no expert
    mask = torch.tensor([[True, True, False], [True, True, True]])
    got = router_supervision_loss(logits, domain, targets, mask)
    want = -torch.log_softmax(logits[:, :2], -1)[..., 2].mean()  # the two valid tokens of sample 0, both layers
    torch.testing.assert_close(got, want)
    none = router_supervision_loss(logits, torch.tensor([1, 1]), targets, mask)
    assert float(none) == 0.0  # a batch without expert-domain tokens adds nothing


def _fit(shards, *extra, steps=40, ckpt_in=None, monitor=None):
    """moe_tiny on the fake shards; the run's files (routing/*.json, heatmaps) go beside the shards."""
    cfg = compose(["model=moe_tiny", "data=domains", f"data.shards={shards}", "data.seq_len=16", "data.batch_size=4",
                   "data.round_robin_web=false", "precision=fp32", "optimizer.lr=1e-2", "scheduler.warmup_steps=2",
                   "trainer.log_every_n_steps=1", *extra])
    dm = DomainDataModule(cfg.data, cfg.seed)
    experts = [cfg.data.domains[d].expert for d in dm.names]
    module, curve = MoELitModule(cfg, domains=dm.names, experts=experts), LossCurve(None, "")
    callbacks = [RunState(), curve] + ([RoutingMonitor(dm.names, 5, 0, experts)] if monitor else [])
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
                        limit_val_batches=2 if monitor else 0, val_check_interval=steps if monitor else None,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=1,
                        default_root_dir=str(shards.parent))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_in)
    return trainer, curve.history


def test_guided_warm_start_routes_each_domain_to_its_expert(fake_shards):
    steps = ["data.round_robin_steps=40", "data.val_batches_per_domain=2"]
    guided, _ = _fit(fake_shards, *steps, "routing.warm_routing=guided", "routing.guided_coef=1.0", monitor=True)
    control, _ = _fit(fake_shards, *steps, "routing.warm_routing=learned", monitor=True)
    g, c = float(guided.callback_metrics["spec/own_share"]), float(control.callback_metrics["spec/own_share"])
    # top-2 routing puts at most half of a token's slots on one expert: the share's ceiling is 0.5, uniform is 0.2
    assert g > 0.4 and c < 0.3, (g, c)
    g1, c1 = float(guided.callback_metrics["spec/top1_own"]), float(control.callback_metrics["spec/top1_own"])
    assert g1 > 0.5 and c1 < 0.35, (g1, c1)
    assert "train/guided_loss" in guided.callback_metrics and "train/guided_loss" not in control.callback_metrics


def test_the_term_is_absent_after_the_warm_start(fake_shards, monkeypatch):
    from moe_lm.training import warm_start

    calls = []
    real = warm_start.router_supervision_loss
    monkeypatch.setattr(warm_start, "router_supervision_loss", lambda *a: (calls.append(1), real(*a))[1])
    trainer, _ = _fit(fake_shards, "data.round_robin_steps=3", "routing.warm_routing=guided",
                      "routing.guided_anneal=constant", steps=6)
    assert len(calls) == 3  # steps 0, 1, 2 of the warm start; nothing computed or added after it
    assert float(trainer.callback_metrics["train/guided_coef"]) == pytest.approx(0.1)


def test_resume_in_the_middle_of_the_warm_start_continues_the_annealing_exactly(tmp_path, fake_shards):
    args = ["data.round_robin_steps=6", "routing.warm_routing=guided", "routing.guided_coef=0.5"]
    torch.manual_seed(0)
    _, full = _fit(fake_shards, *args, steps=8)
    torch.manual_seed(0)
    trainer, _ = _fit(fake_shards, *args, steps=3)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    torch.manual_seed(99)
    _, resumed = _fit(fake_shards, *args, steps=8, ckpt_in=str(tmp_path / "step3.ckpt"))
    assert [s for s, _ in resumed] == list(range(1, 9))  # steps 1-3 came back with the checkpoint
    for (_, a), (_, b) in zip(resumed, full):
        assert abs(a - b) <= 1e-6


def test_forced_guided_forces_the_own_expert_and_adds_the_supervision_term():
    from moe_lm.training.warm_start import WarmStart

    cfg = compose(["model=moe_tiny", "data=domains", "data.seq_len=16", "data.round_robin_steps=10", "routing.warm_batches=mixed",
                   "routing.warm_routing=forced_guided", "routing.guided_coef=0.02"])
    warm = WarmStart(cfg, [0, 1, None], ["math", "code", "web"])
    batch = {"domain": torch.tensor([1, 2]), "input_ids": torch.zeros(2, 4, dtype=torch.long)}
    valid = torch.ones(2, 4, dtype=torch.bool)
    assert warm.begin(None, 0, True, batch).tolist() == [[1] * 4, [-1] * 4]  # code's expert; web has none
    coef, loss = warm.guidance(torch.randn(2, 8, 5), batch, valid, 0, True)
    assert coef == pytest.approx(0.02) and float(loss) > 0
    assert warm.begin(None, 10, True, batch) is None and warm.guidance(torch.randn(2, 8, 5), batch, valid, 10, True) == (0.0, None)
