"""Atomic saves, exact resume, and clear errors for checkpoints that cannot be resumed from."""

import lightning as L
import pytest
import torch

from moe_lm.cli import compose
from moe_lm.data.shards import DomainDataModule
from moe_lm.errors import CheckpointError
from moe_lm.io.checkpoint import load_model
from moe_lm.training.callbacks import LossCurve
from moe_lm.training.checkpointing import AtomicCheckpointIO, RunState, resolve_resume
from moe_lm.training.lit_module import MoELitModule


def test_crash_mid_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"\x80\x02partial")  # some bytes reach the disk, then the process dies
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["step"] == 1


def test_truncated_checkpoint_fails_clearly(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        io.load_checkpoint(path)
    assert resolve_resume("auto", tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError, match="checkpoint.resume"):
        resolve_resume(str(tmp_path / "missing.ckpt"), tmp_path)


def _cfg(shards, *extra):
    return compose(["model=moe_tiny", "data=domains", f"data.shards={shards}", "data.seq_len=16",
                    "data.batch_size=2", "data.round_robin_steps=2", "precision=fp32", "scheduler.warmup_steps=2",
                    "optimizer.lr=1e-2", *extra])


def _fit(cfg, max_steps, ckpt_in=None):
    dm = DomainDataModule(cfg.data, cfg.seed)
    module, curve = MoELitModule(cfg, domains=dm.names), LossCurve(None, "")
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, limit_val_batches=0, enable_model_summary=False,
                        plugins=[AtomicCheckpointIO()], callbacks=[RunState(), curve])
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_in)
    return trainer, module, curve.history


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, fake_shards):
    cfg = _cfg(fake_shards)
    torch.manual_seed(0)
    _, full_model, full = _fit(cfg, 8)
    torch.manual_seed(0)
    trainer, _, _ = _fit(cfg, 4)
    trainer.save_checkpoint(tmp_path / "step4.ckpt")
    torch.manual_seed(123)  # a fresh process would start from another RNG state; the checkpoint restores it
    _, resumed_model, resumed = _fit(cfg, 8, str(tmp_path / "step4.ckpt"))
    # (optimizer steps done, loss of the step's batch); the loss curve's history came back with the checkpoint
    assert [s for s, _ in resumed] == list(range(1, 9))
    for (_, a), (_, b) in zip(resumed, full):
        assert abs(a - b) <= 1e-6
    for (name, p), q in zip(full_model.model.state_dict().items(), resumed_model.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_resume_into_another_architecture_names_the_difference(tmp_path, fake_shards):
    trainer, _, _ = _fit(_cfg(fake_shards), 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match=r"model\.n_layers: checkpoint 2 != config 3"):
        _fit(_cfg(fake_shards, "model.n_layers=3"), 2, str(tmp_path / "a.ckpt"))


def test_resume_with_changed_settings_that_keep_the_shapes_warns_and_continues(tmp_path, fake_shards):
    trainer, _, _ = _fit(_cfg(fake_shards), 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    changed = ["model.aux_loss_coef=0.05", "model.dropout=0.1", "model.mla_absorb=false", "model.top_k=3"]
    with pytest.warns(UserWarning, match=r"model\.aux_loss_coef: checkpoint 0\.01 != config 0\.05") as record:
        trainer, module, _ = _fit(_cfg(fake_shards, *changed), 2, str(tmp_path / "a.ckpt"))
    text = "\n".join(str(w.message) for w in record)
    for key in ("dropout", "mla_absorb", "top_k"):
        assert f"model.{key}:" in text
    assert trainer.global_step == 2 and module.model.cfg.top_k == 3  # the new values apply from now on


def test_checkpoints_from_before_the_layout_change_still_load(tmp_path, fake_shards):
    """Checkpoints written before `train:` became `checkpoint:` (and before the data schemas split) load for
    inference and resume: only the model config is read back."""
    trainer, module, _ = _fit(_cfg(fake_shards), 1)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    old = torch.load(tmp_path / "new.ckpt", weights_only=True)
    cfg = old["moe_lm_config"]
    cfg["train"] = cfg.pop("checkpoint")  # the old key
    cfg["data"]["name"] = "domains"  # the old fused DataConfig's discriminator
    torch.save(old, tmp_path / "old.ckpt")
    model, _, saved = load_model(tmp_path / "old.ckpt")
    assert saved["train"]["resume"] is None
    for (name, p), q in zip(module.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    trainer, _, _ = _fit(_cfg(fake_shards), 2, str(tmp_path / "old.ckpt"))
    assert trainer.global_step == 2
