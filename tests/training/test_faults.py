"""Training under faults, in process on fake shards: a signal mid-accumulation, a loss that turns NaN, a second run
on the same directory, a stale checkpoint directory, changed settings on resume, padded micro-batches."""

import os
import signal

import lightning as L
import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import ConfigError
from moe_lm.data.files import DirectoryLock
from moe_lm.data.shards import DomainDataModule
from moe_lm.errors import NonFiniteError
from moe_lm.errors import CheckpointError
from moe_lm.training import run
from moe_lm.training.lit_module import MoELitModule
from moe_lm.training.run import train

TINY = ["model=moe_tiny", "model.vocab_size=2048", "precision=fp32", "trainer.progress_bar=false", "logger.csv=false",
        "trainer.log_every_n_steps=1", "data=domains", "data.seq_len=16", "data.batch_size=2",
        "data.round_robin_steps=2"]


@pytest.fixture
def shards_run(monkeypatch, fake_shards, tmp_path):
    """cfg(*overrides) for a run on the fake shards (no tokenizer, no prepare); extra callbacks via `extra`."""
    extra: list[L.Callback] = []
    monkeypatch.setattr(run, "build_data", lambda cfg, out, tok=None: (
        None, DomainDataModule(cfg.data, cfg.seed, cfg.trainer.accumulate_grad_batches)))
    build = run.build_callbacks
    monkeypatch.setattr(run, "build_callbacks", lambda *a: build(*a) + extra)

    def cfg(*overrides: str):
        return compose(TINY + [f"data.shards={fake_shards}", f"prepare.out={fake_shards}", *overrides])

    return cfg, extra


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


class SignalAt(L.Callback):
    """Send this process SIGTERM at the end of micro-batch `micro` of optimizer step `step` (0-based)."""

    def __init__(self, step: int, micro: int, accumulate: int) -> None:
        self.step, self.micro, self.accumulate, self.sent = step, micro, accumulate, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        k = int(batch["batch_id"])
        if not self.sent and k == self.step * self.accumulate + self.micro:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_accumulation_finishes_the_step_and_resumes_exactly(tmp_path, shards_run):
    cfg, extra = shards_run
    n, acc = 4, 3
    straight = cfg("trainer.max_steps=8", f"trainer.accumulate_grad_batches={acc}", f"out_dir={tmp_path}/a")
    train(straight, straight.out_dir)
    stopped = cfg("trainer.max_steps=8", f"trainer.accumulate_grad_batches={acc}", f"out_dir={tmp_path}/b",
                  "checkpoint.resume=auto")
    extra.append(SignalAt(step=n, micro=0, accumulate=acc))  # after the first of three micro-batches of step n
    result = train(stopped, stopped.out_dir)
    extra.clear()
    assert result["stopped_by"] == "SIGTERM" and result["steps"] == n + 1  # the step was finished, then saved
    last = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == n + 1 and last["DomainDataModule"]["consumed"] == (n + 1) * acc
    train(stopped, stopped.out_dir)  # resume to the end
    a, b = weights(tmp_path / "a" / "checkpoints" / "final.ckpt"), weights(tmp_path / "b" / "checkpoints" / "final.ckpt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


class PoisonAt(L.Callback):
    """Make one weight NaN before optimizer step `step` (0-based) runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.lm_head.weight[0, 0] = float("nan")


def test_a_nan_loss_stops_the_run_and_the_last_checkpoint_stays_finite(tmp_path, shards_run):
    cfg, extra = shards_run
    c = cfg("trainer.max_steps=10", "checkpoint.every_n_steps=1", f"out_dir={tmp_path}")
    extra.append(PoisonAt(5))
    with pytest.raises(NonFiniteError, match=r"step 6: the loss \(nan\) or gradient norm \(nan\) is not finite"):
        train(c, c.out_dir)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "checkpoints" / "final.ckpt").exists() and not (tmp_path / "result.json").exists()
    extra.clear()
    again = cfg("trainer.max_steps=7", "checkpoint.every_n_steps=1", f"out_dir={tmp_path}", "checkpoint.resume=auto")
    assert train(again, again.out_dir)["steps"] == 7  # the kept checkpoint loads and trains on


def test_a_second_training_run_on_the_same_directory_is_refused(tmp_path, shards_run):
    cfg, _ = shards_run
    c = cfg("trainer.max_steps=2", f"out_dir={tmp_path}")
    with DirectoryLock(tmp_path, "out_dir", "training run"):  # the first run holds it
        with pytest.raises(ConfigError, match=rf"out_dir: {tmp_path} is in use by another training run \(pid"):
            train(c, c.out_dir)
    assert not (tmp_path / "checkpoints").exists()  # refused before any work
    train(c, c.out_dir)


def test_resume_auto_takes_the_newest_checkpoint_and_a_fresh_run_never_overwrites_one(tmp_path, shards_run):
    cfg, _ = shards_run
    c = cfg("trainer.max_steps=4", "checkpoint.every_n_steps=2", f"out_dir={tmp_path}")
    train(c, c.out_dir)
    ckdir = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match=r"checkpoint.resume: .* holds checkpoints of an earlier run \(last.ckpt "
                                              r"at step 4\); continue it with checkpoint.resume=auto"):
        train(c, c.out_dir)
    os.replace(ckdir / "step0000002.ckpt", ckdir / "last.ckpt")  # last.ckpt is now older than final.ckpt
    (ckdir / "step0000004.ckpt").write_bytes(b"torn")  # and the newest step file is unreadable
    from moe_lm.training.checkpointing import resolve_resume

    with pytest.warns(UserWarning, match="skipping .*step0000004.ckpt, not a readable moe_lm checkpoint"):
        assert resolve_resume("auto", ckdir) == str(ckdir / "final.ckpt")


def test_resume_auto_with_every_checkpoint_unreadable_stops_and_changes_nothing(tmp_path, shards_run):
    cfg, _ = shards_run
    c = cfg("trainer.max_steps=2", "logger.csv=true", f"out_dir={tmp_path}")
    train(c, c.out_dir)
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])  # torn
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = cfg("trainer.max_steps=2", "logger.csv=true", f"out_dir={tmp_path}", "checkpoint.resume=auto")
    with pytest.warns(UserWarning, match="not a readable moe_lm checkpoint"), \
            pytest.raises(CheckpointError, match=r"checkpoint.resume=auto: .* holds checkpoints but none is readable "
                                                 r"\(final.ckpt, last.ckpt\); nothing was changed"):
        train(again, again.out_dir)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p for p in before if p.suffix in (".ckpt", ".safetensors", ".csv", ".json")} <= set(after)
    assert all(after[p] == before[p] for p in before if p.suffix in (".ckpt", ".safetensors", ".csv", ".json"))


def test_changed_lr_and_horizon_on_resume_are_applied(tmp_path, shards_run):
    cfg, _ = shards_run
    first = cfg("trainer.max_steps=3", "optimizer.lr=1e-3", "scheduler=constant", "scheduler.warmup_steps=0",
                f"out_dir={tmp_path}")
    train(first, first.out_dir)
    more = cfg("trainer.max_steps=5", "optimizer.lr=5e-4", "scheduler=constant", "scheduler.warmup_steps=0",
               f"out_dir={tmp_path}", "checkpoint.resume=auto")
    with pytest.warns(UserWarning, match=r"changed optimizer/schedule settings, applied(.|\n)*optimizer.lr: 0.001 -> 0.0005"):
        train(more, more.out_dir)
    ckpt = torch.load(tmp_path / "checkpoints" / "final.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    lrs = [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]]
    assert lrs[0] == pytest.approx(5e-4) and ckpt["lr_schedulers"][0]["base_lrs"][0] == pytest.approx(5e-4)


def test_padded_micro_batches_accumulate_to_the_gradient_of_one_batch(tmp_path):
    from moe_lm.data.bpe import train_bpe
    from moe_lm.data.text_lines import TextLinesDataModule, collate

    lines = ["a short line", "a much longer line with many more words in it than the first one has",
             "mid length line here", "x", "another quite long line of text to pad the others against", "tiny"]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    cfg = compose(["model=moe_tiny", "model.vocab_size=512", "precision=fp32", f"data.path={path}",
                   "data.sampling=lines", "data.batch_size=2", "trainer.accumulate_grad_batches=3",
                   "model.use_aux_loss=false", "model.use_z_loss=false"])
    tok = train_bpe(lines, 300)
    dm = TextLinesDataModule(cfg.data, tok, cfg.seed, accumulate=3)
    micro = list(dm.train_dataloader())[:3]  # one optimizer step
    assert len({int(b["targets"].ne(-100).sum()) for b in micro}) > 1  # the micro-batches differ in valid targets
    module = MoELitModule(cfg).train()
    for b in micro:  # what Lightning does: each loss / accumulate, gradients summed
        (module._step(b)[0] / 3).backward()
    accumulated = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    samples = [s for b in micro for s in (row[row.ne(-100)].tolist() for row in
               torch.cat([b["input_ids"][:, :1], torch.where(b["targets"].ne(-100), b["targets"], -100)], 1))]
    whole = collate(samples, dm.pad_id)
    module._step(whole)[0].backward()  # one batch of all six samples, mean over its valid targets
    for n, p in module.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(accumulated[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_extending_a_finished_run_logs_each_new_row_under_its_step(tmp_path):
    """A finished run resumed with a larger trainer.max_steps: its rows continue at the next step, as the rows of
    one run of that length would (the lines data: an epoch-based loader)."""
    import csv

    from moe_lm.cli import compose as compose_cfg

    tiny = ["model=moe_tiny", "model.vocab_size=2048", "precision=fp32", "trainer.progress_bar=false",
            "logger.csv=true", "trainer.log_every_n_steps=1", "trainer.val_check_interval=1", f"out_dir={tmp_path}"]
    train(compose_cfg(tiny + ["trainer.max_steps=3"]), tmp_path)
    train(compose_cfg(tiny + ["trainer.max_steps=5", "checkpoint.resume=auto"]), tmp_path)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3, 4]
    assert [int(r["step"]) for r in rows if r.get("val/loss")] == [0, 1, 2, 3, 4]


def test_a_kill_just_after_a_checkpoint_loses_no_metric_row(shards_run, tmp_path, monkeypatch):
    """What a SIGKILL leaves a moment after step 2's checkpoint is written (that checkpoint, the metrics file as it
    is then): resumed from there, the run has the rows of an uninterrupted run, each step's once."""
    import csv
    import shutil

    from moe_lm.training.checkpointing import AtomicCheckpointIO

    cfg, _ = shards_run
    full, killed = tmp_path / "full", tmp_path / "killed"
    save = AtomicCheckpointIO.save_checkpoint

    def save_then_snapshot(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if checkpoint["global_step"] == 2 and not killed.exists():
            shutil.copytree(full, killed, ignore=shutil.ignore_patterns(".lock"))

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_then_snapshot)
    common = ["logger.csv=true", "trainer.val_check_interval=1", "checkpoint.every_n_steps=2", "trainer.max_steps=4"]
    train(cfg(*common, f"out_dir={full}"), full)
    assert [torch.load(p, weights_only=True)["global_step"] for p in (killed / "checkpoints").glob("*.ckpt")] == [2]
    train(cfg(*common, "checkpoint.resume=auto", f"out_dir={killed}"), killed)

    def rows(out, key):
        with open(out / "csv" / "metrics.csv", newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]

    for key in ("train/loss", "moe/load_cv", "val/loss"):
        assert rows(full, key) == [0, 1, 2, 3], key
        assert rows(killed, key) == rows(full, key), key
