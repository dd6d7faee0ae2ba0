"""The data sampler's state travels in Lightning checkpoints: a resumed fit continues with the next batch."""

import json

import lightning as L
import numpy as np
import torch

from moe_lm.conf_utils import compose
from moe_lm.data.datamodule import DomainDataModule
from moe_lm.lit_module import MoELitModule

DOMAINS = ["math", "code", "science", "legal", "chat", "web"]


def fake_shards(root):
    for d, name in enumerate(DOMAINS):
        (root / name).mkdir(parents=True)
        (np.arange(4000) % 500 + d).astype(np.uint16).tofile(root / name / "train.bin")
        (np.arange(400) % 500).astype(np.uint16).tofile(root / name / "val.bin")
        (root / name / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokens": {"train": 4000, "val": 400}}))


class SeenBatches(L.Callback):
    def __init__(self):
        self.ids = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.ids.append(int(batch["batch_id"]))


def fit(cfg, ckpt_in=None, max_steps=3):
    dm = DomainDataModule(cfg.data, cfg.seed)
    seen = SeenBatches()
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[seen], limit_val_batches=0, enable_model_summary=False)
    trainer.fit(MoELitModule(cfg), datamodule=dm, ckpt_path=ckpt_in)
    return trainer, seen.ids


def test_checkpoint_carries_data_state_and_resume_continues(tmp_path):
    fake_shards(tmp_path / "shards")
    cfg = compose(["model=moe_tiny", "data=domains", f"data.shards={tmp_path}/shards", "data.seq_len=16",
                   "data.batch_size=2", "data.round_robin_steps=2", "precision=fp32", "trainer.log_every_n_steps=1"])
    trainer, first = fit(cfg)
    assert first == [0, 1, 2]
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["DomainDataModule"] == {"consumed": 3, "seed": cfg.seed}
    _, resumed = fit(cfg, ckpt_in=str(path), max_steps=5)
    assert resumed == [3, 4]


def test_validation_logs_domain_by_expert_routing_matrix_and_heatmap(tmp_path):
    fake_shards(tmp_path / "shards")
    cfg = compose(["model=moe_tiny", "data=domains", f"data.shards={tmp_path}/shards", "data.seq_len=16",
                   "data.batch_size=2", "data.val_batches_per_domain=1", "precision=fp32"])
    trainer = L.Trainer(max_steps=2, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(MoELitModule(cfg), datamodule=DomainDataModule(cfg.data, cfg.seed))
    m = trainer.callback_metrics
    for d in DOMAINS:
        row = [float(m[f"routing/{d}/expert{e}"]) for e in range(5)]
        assert abs(sum(row) - 1.0) < 1e-5  # each domain's tokens are split over the experts
        assert f"val/loss/{d}" in m
    assert (tmp_path / "routing" / "heatmap_step0000002.png").stat().st_size > 1000
    assert 0.0 < float(m["moe/router_entropy"]) <= float(torch.log(torch.tensor(5.0))) + 1e-6
