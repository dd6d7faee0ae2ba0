"""Checkpoints that are never lost: atomic writes, periodic and wall-clock saves, save on SIGTERM/SIGINT,
resume from `auto` (the run's last.ckpt) or a path, and safe, checked loading."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says why."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to `<name>.tmp`, fsync, then rename: a crash mid-write leaves the previous file intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated, corrupt, or not a checkpoint
            raise CheckpointError(f"train.resume: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from e


class SaveOnSignal(L.Callback):
    """On SIGTERM/SIGINT: finish the current batch, save `last.ckpt`, stop cleanly."""

    def __init__(self, path: Path) -> None:
        self.path, self.received = path, None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None:
            trainer.save_checkpoint(str(self.path), weights_only=False)
            pl_module.print(f"signal {signal.Signals(self.received).name}: saved {self.path}, stopping")
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)


def resolve_resume(resume: Optional[str], ckpt_dir: Path) -> Optional[str]:
    """`auto`: the directory's last.ckpt if there is one; a path: that file, which must exist; null: none."""
    if resume is None:
        return None
    if resume == "auto":
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"train.resume: no such checkpoint: {resume}")
    return resume


def config_mismatch(saved: dict[str, Any], current: dict[str, Any], prefix: str = "model") -> list[str]:
    """Keys whose values differ between a checkpoint's model config and the current one."""
    keys = sorted(set(saved) | set(current))
    return [f"{prefix}.{k}: checkpoint {saved.get(k)!r} != config {current.get(k)!r}"
            for k in keys if saved.get(k) != current.get(k)]
