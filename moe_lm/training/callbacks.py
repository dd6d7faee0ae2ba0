"""Callbacks that watch training without changing it: the progress bar, throughput and MFU, the first batch
decoded, and the loss curve."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from moe_lm.data.text_lines import IGNORE_INDEX
from moe_lm.model.counting import CPU_PEAK_FLOPS, PEAK_FLOPS, UNKNOWN_GPU_PEAK_FLOPS

# Dense bf16/fp16 tensor-core peak FLOP/s per device (no sparsity), from vendor data sheets.
def device_peak_flops(device: torch.device, override: Optional[float] = None) -> float:
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in PEAK_FLOPS.items() if key in name), UNKNOWN_GPU_PEAK_FLOPS)
    return CPU_PEAK_FLOPS


def at_optimizer_step(trainer: L.Trainer, batch_idx: int) -> bool:
    """True on the last micro-batch of an optimizer step (after gradient accumulation)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


def is_log_step(trainer: L.Trainer) -> bool:
    return trainer.global_step % max(1, trainer.log_every_n_steps) == 0


class StepProgressBar(RichProgressBar):
    """Lightning's Rich bar, titled with optimizer steps: runs stop at max_steps, so its `Epoch 3/-2` says nothing.
    Its loss is read at logging steps only: a `prog_bar=True` metric is copied to the host after every batch,
    which would make every step wait for the device."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loss: float | None = None

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        if self._loss is not None:
            items["loss"] = f"{self._loss:.4g}"
        return items

    def _get_train_description(self, current_epoch: int) -> str:
        desc = f"step {self.trainer.global_step}/{self.trainer.max_steps}"
        return f"{desc:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Count optimizer steps, not batches, and retitle the bar: Lightning sets its title once per epoch, and a
        run here is one endless epoch, so the title would stay at step 0."""
        if is_log_step(trainer) and "train/loss" in trainer.callback_metrics:
            self._loss = float(trainer.callback_metrics["train/loss"])
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step, total=trainer.max_steps,
                                 description=self._get_train_description(trainer.current_epoch))
            self.refresh()


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def interactive_terminal() -> bool:
    """Whether stdout is a terminal that takes cursor movement (not a pipe, a file, or TERM=dumb as in a notebook)."""
    from rich.console import Console

    return Console().is_interactive


class LineProgress(ProgressBar):
    """Progress for output that is not an interactive terminal (a notebook, a log file, a pipe): a plain line every
    `every` optimizer steps and one per validation, no cursor codes and no line twice."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every, self._enabled, self._last = max(1, every), True, -1
        self._start: tuple[float, int] | None = None

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, end = trainer.global_step, trainer.max_steps
        if not (self._enabled and trainer.is_global_zero) or step == self._last or (step % self.every and step != end):
            return
        self._last = step
        t0, s0 = self._start or (time.perf_counter(), step)
        rate = (step - s0) / max(time.perf_counter() - t0, 1e-9)
        loss = trainer.callback_metrics.get("train/loss")
        left = f", about {duration((end - step) / rate)} left" if rate > 0 and end > step else ""
        print(f"step {step}/{end}" + (f"  train/loss {float(loss):.4f}" if loss is not None else "")
              + f"  ({rate:.2f} steps/s{left})", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if self._enabled and trainer.is_global_zero and not trainer.sanity_checking and value is not None:
            print(f"step {trainer.global_step}: val/loss {float(value):.4f}", flush=True)


class Throughput(L.Callback):
    """`perf/tokens_per_s`, `perf/mfu` (against the device's peak) and `train/lr`, at logging steps."""

    def __init__(self, flops_per_token: float, peak_flops: Optional[float] = None) -> None:
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._t_last: Optional[float] = None
        self._tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += batch["input_ids"].numel()
        if not at_optimizer_step(trainer, batch_idx) or not is_log_step(trainer):
            return
        now = time.perf_counter()
        if self._t_last is not None:
            tok_s = self._tokens * trainer.world_size / (now - self._t_last)
            peak = device_peak_flops(pl_module.device, self.peak_flops) * trainer.world_size
            pl_module.log_dict({"perf/tokens_per_s": tok_s, "perf/mfu": tok_s * self.flops_per_token / peak})
        pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"])
        self._t_last, self._tokens = now, 0


class FirstBatchPrinter(L.Callback):
    """At step 0, decode sample 0 with its shifted targets (printed and sent to loggers with `log_text`), so an
    off-by-one in slicing is visible at once."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != 0 or batch_idx != 0:
            return
        ids = batch["input_ids"][0].tolist()
        tgt = [t for t in batch["targets"][0].tolist() if t != IGNORE_INDEX]
        rows = [(self.tok.id_to_token(i), self.tok.id_to_token(t)) for i, t in zip(ids, tgt)][:16]
        pl_module.print("first batch, sample 0\n  input : " + repr(self.tok.decode(ids, skip_special_tokens=False))
                        + "\n  target: " + repr(self.tok.decode(tgt, skip_special_tokens=False))
                        + "\n  (input -> target) " + " ".join(f"{a!r}->{b!r}" for a, b in rows))
        for logger in trainer.loggers:
            if hasattr(logger, "log_text"):
                logger.log_text(key="train/first_batch", columns=["input", "target"],
                                data=[[self.tok.decode(ids), self.tok.decode(tgt)]])


class LossCurve(L.Callback):
    """Train cross-entropy after every optimizer step and the validation losses (overall and per domain) at every
    validation; kept in checkpoints, so a resumed run's `loss_curve.png` (written at the end of fit) covers the
    whole run."""

    def __init__(self, path: Optional[Path], title: str) -> None:
        self.path, self.title = path, title
        self.history: list[tuple[int, float]] = []
        self.val: dict[str, list[tuple[int, float]]] = {}  # "val/loss" and "val/loss/<domain>" -> (step, loss)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        if at_optimizer_step(trainer, batch_idx):
            self.history.append((trainer.global_step, float(outputs["ce"])))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for key, value in trainer.callback_metrics.items():
            if key == "val/loss" or key.startswith("val/loss/"):
                self.val.setdefault(key, []).append((trainer.global_step, float(value)))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "val": self.val}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(p) for p in state.get("history", [])]
        self.val = {k: [tuple(p) for p in v] for k, v in state.get("val", {}).items()}

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.path is not None and self.history and trainer.is_global_zero:
            from moe_lm.eval.plots import loss_curve

            loss_curve(self.history, self.val, self.path, self.title)

class HeldoutEval(L.Callback):
    """At every validation, the held-out text of `eval.heldout_root` scored per domain like `moe_lm.evaluate`
    (windows of data.seq_len tokens, half a window apart): `heldout/<domain>/loss` and `heldout/<domain>/bpb`."""

    def __init__(self, registry, root: str, max_documents: int, context: int, tok) -> None:
        """registry: the DomainsDataConfig that says how each domain's files are read."""
        from moe_lm.eval.heldout import domain_documents, token_stream

        docs = domain_documents(registry, Path(root), [], max_documents)
        self.streams = {n: (token_stream(tok, d["documents"]), sum(len(x.encode("utf-8")) for x in d["documents"]))
                        for n, d in docs.items()}
        self.context = context

    def on_validation_end(self, trainer, pl_module) -> None:
        import math

        from moe_lm.eval.heldout import score_stream

        if trainer.sanity_checking:
            return
        model, was_training = pl_module.model, pl_module.model.training
        model.eval()
        metrics = {}
        for name, (ids, n_bytes) in self.streams.items():
            if len(ids) > 1:
                s = score_stream(model, ids, self.context, max(1, self.context // 2), 8)
                metrics[f"heldout/{name}/loss"] = s["nll"] / s["tokens"]
                metrics[f"heldout/{name}/bpb"] = s["nll"] / math.log(2) / max(1, n_bytes)
        model.train(was_training)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
