"""Loggers of a run: CSV (continued across resumes) and wandb (the same run across resumes), both given the
resolved config as hyper-parameters. No checkpoint names a step whose CSV row is not on disk (write_pending_row).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Optional

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from moe_lm.config import TrainConfig


class ContinuingWriter(ExperimentWriter):
    """Keeps an existing metrics.csv instead of deleting it: rows logged at or after `resume_step` (a killed run can
    log past its last checkpoint) are dropped, the rest stay, and new rows are appended under the same header."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        path = Path(log_dir) / self.NAME_METRICS_FILE
        rows, header = [], []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("step") not in (None, "") and int(r["step"]) < resume_step]
            path.unlink()  # the parent's constructor would delete it anyway; it is written back below
        super().__init__(log_dir)
        if header:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)
            self.metrics_keys = header


class ContinuingCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a resume (Lightning's starts the file again)."""

    def __init__(self, *args: Any, resume_step: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self._written: tuple[int, dict[str, Any]] | None = None  # a step's values already written ahead of time

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        """A row for a step whose values were written ahead (write_now) carries only the values not yet written."""
        if self._written is not None and step == self._written[0]:
            metrics = {k: v for k, v in metrics.items() if self._written[1].get(k, object()) != v}
            if not metrics:
                return
        else:
            self._written = None
        super().log_metrics(metrics, step)

    def write_now(self, metrics: dict[str, Any], step: int) -> None:
        """Write and flush a row now; the same values logged later for this step are then not written again."""
        self.log_metrics(metrics, step)
        self.save()
        self._written = (step, {**(self._written[1] if self._written else {}), **metrics})

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = (ExperimentWriter(self.log_dir) if self.resume_step is None
                                else ContinuingWriter(self.log_dir, self.resume_step))
        return self._experiment


def write_pending_row(trainer) -> None:
    """Write the just-finished optimizer step's CSV row, if it is due, before a checkpoint of that step is saved.

    Lightning saves checkpoints in the on_train_batch_end hooks and logs the step's row only after them, so a
    process killed between the two resumed past a row that was never written. Called from on_save_checkpoint; does
    nothing outside that window (after fit, or mid-accumulation)."""
    loop = trainer.fit_loop.epoch_loop
    progress = loop.batch_progress.total
    if progress.processed != progress.completed + 1 or loop._should_accumulate():
        return
    connector = trainer._logger_connector
    if not (connector.should_update_logs or trainer.fast_dev_run):
        return
    metrics = convert_tensors_to_scalars(connector.metrics["log"])  # as Lightning's own log_metrics will log them
    step = metrics.pop("step", None)
    if step is None:
        metrics.setdefault("epoch", trainer.current_epoch)
        step = loop._batches_that_stepped
    for logger in trainer.loggers:
        if isinstance(logger, ContinuingCSVLogger) and metrics:
            logger.write_now(metrics, int(step))


def build_loggers(cfg: TrainConfig, out_dir: Path, resume_from: Optional[str] = None) -> list:
    """CSV and/or wandb; on resume, CSV continues from the checkpoint's step and wandb continues the same run."""
    from lightning.pytorch.loggers import WandbLogger

    from moe_lm.io.checkpoint import read_checkpoint

    ckpt = read_checkpoint(resume_from, "checkpoint.resume") if resume_from else {}
    loggers: list = []
    if cfg.logger.csv:
        loggers.append(ContinuingCSVLogger(str(out_dir), name="csv", version="", resume_step=ckpt.get("global_step"),
                                           flush_logs_every_n_steps=cfg.trainer.log_every_n_steps))
    if cfg.logger.wandb and cfg.logger.wandb_mode != "disabled":
        os.environ.setdefault("WANDB_MODE", cfg.logger.wandb_mode)
        loggers.append(WandbLogger(project=cfg.logger.project, save_dir=str(out_dir), id=ckpt.get("wandb_run_id"),
                                   resume="allow", offline=cfg.logger.wandb_mode == "offline",
                                   name=cfg.logger.name or out_dir.name, group=cfg.logger.group or None))
    return loggers
