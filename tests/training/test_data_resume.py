"""The data sampler's state travels in Lightning checkpoints: a resumed fit continues with the next batch; validation
reports the domain x expert routing matrix."""

import lightning as L
import pytest
import torch

from moe_lm.cli import compose
from moe_lm.data.shards import DomainDataModule
from moe_lm.errors import CheckpointError
from moe_lm.training.lit_module import MoELitModule
from moe_lm.training.routing_monitor import RoutingMonitor

DOMAINS = ["math", "code", "science", "legal", "chat", "web"]


class SeenBatches(L.Callback):
    def __init__(self):
        self.ids = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.ids.append(int(batch["batch_id"]))


def fit(cfg, ckpt_in=None, max_steps=3, seed=None):
    dm = DomainDataModule(cfg.data, cfg.seed if seed is None else seed)
    seen = SeenBatches()
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[seen], limit_val_batches=0, enable_model_summary=False)
    trainer.fit(MoELitModule(cfg, domains=dm.names), datamodule=dm, ckpt_path=ckpt_in)
    return trainer, seen.ids


def test_checkpoint_carries_data_state_and_resume_continues(tmp_path, fake_shards):
    cfg = compose(["model=moe_tiny", "data=domains", f"data.shards={fake_shards}", "data.seq_len=16",
                   "data.batch_size=2", "data.round_robin_steps=2", "precision=fp32", "trainer.log_every_n_steps=1"])
    trainer, first = fit(cfg)
    assert first == [0, 1, 2]
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["DomainDataModule"]
    assert state["consumed"] == 3 and state["seed"] == cfg.seed and state["accumulate"] == 1
    assert state["plan"]["train_tokens"] == [4000] * 6 and state["plan"]["round_robin_steps"] == 2
    _, resumed = fit(cfg, ckpt_in=str(path), max_steps=5)
    assert resumed == [3, 4]
    with pytest.raises(CheckpointError, match=r"seed: the checkpoint's data order was made with seed 1337, .* 7"):
        fit(cfg, ckpt_in=str(path), max_steps=5, seed=7)
    other = compose(["model=moe_tiny", "data=domains", f"data.shards={fake_shards}", "data.seq_len=16",
                     "data.batch_size=2", "data.round_robin_steps=3", "precision=fp32", "trainer.log_every_n_steps=1"])
    with pytest.raises(CheckpointError, match=r"data: the checkpoint's data order was made with plan"):
        fit(other, ckpt_in=str(path), max_steps=5)


def test_validation_logs_domain_by_expert_routing_matrix_and_heatmap(tmp_path, fake_shards):
    cfg = compose(["model=moe_tiny", "data=domains", f"data.shards={fake_shards}", "data.seq_len=16",
                   "data.batch_size=2", "data.val_batches_per_domain=1", "precision=fp32", "trainer.log_every_n_steps=1"])
    dm = DomainDataModule(cfg.data, cfg.seed)
    trainer = L.Trainer(max_steps=2, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=str(tmp_path),
                        log_every_n_steps=1, callbacks=[RoutingMonitor(dm.names, 5, 0)])
    trainer.fit(MoELitModule(cfg, domains=dm.names), datamodule=dm)
    m = trainer.callback_metrics
    for d in DOMAINS:
        row = [float(m[f"routing/{d}/expert{e}"]) for e in range(5)]
        assert abs(sum(row) - 1.0) < 1e-5  # each domain's tokens are split over the experts
        assert f"val/loss/{d}" in m
    assert (tmp_path / "routing" / "heatmap_step0000002.png").stat().st_size > 1000
    assert 0.0 < float(m["moe/router_entropy"]) <= float(torch.log(torch.tensor(5.0))) + 1e-6
