"""Atomic saves, exact resume, and clear errors for checkpoints that cannot be resumed from."""

import lightning as L
import pytest
import torch

from moe_lm.checkpointing import AtomicCheckpointIO, CheckpointError, resolve_resume
from moe_lm.conf_utils import compose
from moe_lm.data.datamodule import DomainDataModule
from moe_lm.lit_module import MoELitModule
from tests.test_data_resume import fake_shards


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
    with pytest.raises(FileNotFoundError, match="train.resume"):
        resolve_resume(str(tmp_path / "missing.ckpt"), tmp_path)


def _cfg(tmp_path, *extra):
    return compose(["model=moe_tiny", "data=domains", f"data.shards={tmp_path}/shards", "data.seq_len=16",
                    "data.batch_size=2", "data.round_robin_steps=2", "precision=fp32", "scheduler.warmup_steps=2",
                    "optimizer.lr=1e-2", *extra])


def _fit(cfg, max_steps, ckpt_in=None):
    module = MoELitModule(cfg)
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, limit_val_batches=0, enable_model_summary=False,
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=DomainDataModule(cfg.data, cfg.seed), ckpt_path=ckpt_in)
    return trainer, module


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    fake_shards(tmp_path / "shards")
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    _, full = _fit(cfg, 8)
    torch.manual_seed(0)
    trainer, first = _fit(cfg, 4)
    trainer.save_checkpoint(tmp_path / "step4.ckpt")
    torch.manual_seed(123)  # a fresh process would start from another RNG state; the checkpoint restores it
    _, resumed = _fit(cfg, 8, str(tmp_path / "step4.ckpt"))
    assert [s for s, _ in resumed.loss_history] == [4, 5, 6, 7]
    for (_, a), (_, b) in zip(resumed.loss_history, full.loss_history[4:]):
        assert abs(a - b) <= 1e-6
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_resume_into_another_architecture_names_the_difference(tmp_path):
    fake_shards(tmp_path / "shards")
    trainer, _ = _fit(_cfg(tmp_path), 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match=r"model\.n_layers: checkpoint 2 != config 3"):
        _fit(_cfg(tmp_path, "model.n_layers=3"), 2, str(tmp_path / "a.ckpt"))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_auto_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "moe_lm.train", "model=moe_tiny", "model.vocab_size=2048", "precision=fp32",
            "trainer.max_steps=100000", "trainer.progress_bar=false", "logger.csv=false", f"out_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/hydra", "train.resume=auto"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until training runs
        if "first batch" in line or time.time() > deadline:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "signal SIGTERM: saved" in out
    last = tmp_path / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step > 0
    done = subprocess.run(args[:-5] + ["trainer.max_steps=" + str(step + 3), "trainer.progress_bar=false",
                                       f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra", "train.resume=auto"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"resuming from {last}" in done.stdout
    assert torch.load(last, weights_only=True)["global_step"] == step + 3
