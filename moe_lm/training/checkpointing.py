"""Checkpoints that are never lost: atomic writes, save on SIGTERM/SIGINT, RNG and wandb run id carried across a
resume, `checkpoint.resume=auto|PATH`, and a resume check that refuses another architecture by name.

Reading goes through the one loader, moe_lm/io/checkpoint.py (weights_only=True).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from moe_lm.config import ModelConfig
from moe_lm.errors import CheckpointError
from moe_lm.io.checkpoint import model_config_from, read_checkpoint
from moe_lm.training.loggers import write_pending_row

RESUME_KEY = "checkpoint.resume"


class _WriteErrors:
    """A file whose first OSError is kept: torch.save reports a failed write (disk full) only as an opaque
    'unexpected pos' RuntimeError."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def sync_directory(path: Path) -> None:
    """fsync a directory, where the filesystem allows it (some refuse: then the file's own fsync is all we have)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to `<name>.<pid>.tmp`, fsync, then rename: a crash or a full disk mid-write leaves the previous file
    intact, and two processes never write one temporary file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                out = _WriteErrors(f)
                try:
                    torch.save(checkpoint, out)
                except RuntimeError as e:
                    raise out.error or e
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            free = shutil.disk_usage(path.parent).free / 2 ** 20
            raise OSError(e.errno, f"could not write the checkpoint ({e.strerror or e}; {free:,.0f} MiB free on its "
                          f"disk); the previous {path.name}, if any, is intact", str(path)) from e
        os.replace(tmp, path)
        sync_directory(path.parent)  # the rename itself reaches the disk (a mounted Drive: its FUSE layer)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        return read_checkpoint(path, RESUME_KEY, map_location or "cpu")


class StepBoundary:
    """Tells, at the end of each micro-batch, whether it completed an optimizer step (the end of a gradient
    accumulation): the only moments a checkpoint resumes exactly."""

    def __init__(self) -> None:
        self._step: int | None = None

    def start(self, trainer) -> None:
        self._step = trainer.global_step

    def reached(self, trainer) -> bool:
        crossed = self._step is not None and trainer.global_step != self._step
        self._step = trainer.global_step
        return crossed


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that saves from a training batch only at an optimizer-step boundary: a wall-clock save that
    falls due mid-accumulation waits for the step to finish (Lightning's would save half a step). A save due at a
    step that validates waits for the validation's end: a run resumed from it never skips a validation whose rows
    were not yet written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=False, **kwargs)  # never last-v1.ckpt beside last.ckpt
        self.boundary = StepBoundary()
        self._after_validation = False

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.boundary.start(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.boundary.reached(trainer):
            return
        if trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._after_validation = True
        else:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._after_validation:  # the same decision (every N steps, every M minutes) at the same step
            self._after_validation = False
            super().on_train_batch_end(trainer, pl_module, None, None, 0)
        super().on_validation_end(trainer, pl_module)


class SaveOnSignal(L.Callback):
    """On SIGTERM/SIGINT: finish the current optimizer step (all its micro-batches), save `last.ckpt`, stop. With
    several processes a signal to any of them stops all of them at the same step (they agree at every step
    boundary), and all take part in the save."""

    def __init__(self, path: Path) -> None:
        self.path, self.received = path, None
        self.stopped_by: int | None = None  # the signal every process stopped for
        self._previous: dict[int, Any] = {}
        self.boundary = StepBoundary()

    def _handler(self, signum, frame) -> None:
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        self.boundary.start(trainer)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.boundary.reached(trainer):
            return
        signum = self.received or 0
        if trainer.world_size > 1:  # the largest signal number any process received (0: none)
            flag = torch.tensor(signum, device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op=torch.distributed.ReduceOp.MAX))
        if signum:
            self.stopped_by = signum
            trainer.should_stop = True  # before the save: the step's row is then due, and written first
            trainer.save_checkpoint(str(self.path), weights_only=False)
            pl_module.print(f"signal {signal.Signals(signum).name}: saved {self.path}, stopping")

    def on_train_end(self, trainer, pl_module) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)


class RunState(L.Callback):
    """RNG state and the wandb run id travel in checkpoints, so a resumed run continues both."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        write_pending_row(trainer)  # the step's metric row is on disk before the checkpoint naming the step
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Metric rows are labelled by the loop's count of optimizer steps, which Lightning advances by one when it
        restarts from a checkpoint (it assumes a save before the count moved); a checkpoint written after a
        finished run's last step had already moved it, and an extended run's rows came out one step late. The
        count is the optimizer step, set before the first batch's rows are logged."""
        loop = trainer.fit_loop.epoch_loop
        if getattr(loop, "_batches_that_stepped", trainer.global_step) != trainer.global_step:
            loop._batches_that_stepped = trainer.global_step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if "rng" in checkpoint:
            torch.set_rng_state(checkpoint["rng"]["torch"])
            if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])


def saved_step(path: Path) -> int | None:
    """The global step of a readable moe_lm checkpoint, else None (tensors are memory-mapped, not read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable for any reason: not a candidate
        return None
    return int(ckpt["global_step"]) if "global_step" in ckpt and "moe_lm_config" in ckpt else None


def newest_checkpoint(ckpt_dir: Path) -> tuple[Path, int] | None:
    """The readable checkpoint of the highest step in the directory (last.ckpt on a tie), warning about others."""
    found = []
    for path in sorted(ckpt_dir.glob("*.ckpt")):
        step = saved_step(path)
        if step is None:
            rank_zero_warn(f"{RESUME_KEY}=auto: skipping {path}, not a readable moe_lm checkpoint")
        else:
            found.append((step, path.name == "last.ckpt", path))
    if not found:
        return None
    step, _, path = max(found)
    return path, step


def resolve_resume(resume: Optional[str], ckpt_dir: Path) -> Optional[str]:
    """`auto`: the newest readable checkpoint in the run's checkpoint directory, if any; a path: that file, which
    must exist; null: a fresh run, refused where earlier checkpoints would be overwritten (and picked up later)."""
    if resume is None:
        newest = newest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
        if newest:
            raise CheckpointError(f"{RESUME_KEY}: {ckpt_dir} holds checkpoints of an earlier run ({newest[0].name} at "
                                  f"step {newest[1]}); continue it with checkpoint.resume=auto, or delete them or "
                                  f"choose another out_dir for a fresh run")
        return None
    if resume == "auto":
        newest = newest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
        if newest:
            return str(newest[0])
        unreadable = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
        if unreadable:  # a fresh run would overwrite them, and the run's other files with them
            raise CheckpointError(f"{RESUME_KEY}=auto: {ckpt_dir} holds checkpoints but none is readable "
                                  f"({', '.join(unreadable)}); nothing was changed. Resume from a good copy with "
                                  f"checkpoint.resume=PATH, or move them away to start afresh")
        return None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"{RESUME_KEY}: no such checkpoint: {resume}")
    return resume


def _shapes(cfg: ModelConfig) -> dict[str, tuple]:
    from moe_lm.model import MoETransformer

    with torch.device("meta"):  # no memory, no init cost
        return {k: tuple(v.shape) for k, v in MoETransformer(cfg).state_dict().items()}


def architecture_diff(saved: dict[str, Any], current: ModelConfig) -> tuple[list[str], list[str]]:
    """(differences that change weight shapes, other differences) between a checkpoint's model config and ours.

    A field counts as shape-changing when setting it alone to our value changes the saved model's tensor shapes.
    """
    base = model_config_from(saved, RESUME_KEY)
    ours = dataclasses.asdict(current)
    changed = [k for k in sorted(ours) if getattr(base, k) != ours[k]]
    reference = _shapes(base) if changed else {}
    shape, other = [], []
    for k in changed:
        line = f"model.{k}: checkpoint {getattr(base, k)!r} != config {ours[k]!r}"
        try:
            moved = _shapes(dataclasses.replace(base, **{k: ours[k]})) != reference
        except ValueError:  # the field alone makes an impossible config: it belongs with the others that changed
            moved = True
        (shape if moved else other).append(line)
    return shape, other


def check_architecture(checkpoint: dict[str, Any], current: ModelConfig) -> None:
    """Refuse to resume into other weight shapes (naming the keys); warn about other changed model settings."""
    saved = checkpoint.get("moe_lm_config", {}).get("model")
    if saved is None:
        raise CheckpointError(f"{RESUME_KEY}: the checkpoint has no moe_lm config (not written by moe_lm.train?)")
    shape, other = architecture_diff(saved, current)
    if shape:
        raise CheckpointError(f"{RESUME_KEY}: the checkpoint is of another architecture:\n  " + "\n  ".join(shape))
    if other:
        rank_zero_warn("resuming with changed model settings (the config's values apply from now on):\n  "
                       + "\n  ".join(other))
