"""LightningModule: next-token loss plus the balance losses, the optimizer, and the router-bias step; the experts'
warm start is moe_lm/training/warm_start.py.

Lightning owns the loop and the model (moe_lm.model) is plain PyTorch. Everything that only watches training
lives in callbacks (moe_lm/training/callbacks.py, routing_monitor.py): `training_step` and `validation_step`
return the detached routing tensors they need.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import lightning as L
import torch
from tokenizers import Tokenizer
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics.aggregation import MeanMetric

from moe_lm.config import TrainConfig
from moe_lm.data.text_lines import IGNORE_INDEX
from moe_lm.model import MoETransformer
from moe_lm.training.callbacks import is_log_step
from moe_lm.training.checkpointing import check_architecture
from moe_lm.training.distributed import clip_grad_norm, mean_over_processes
from moe_lm.training.finite_guard import FiniteGuard
from moe_lm.training.grow import FrozenExperts, grow_from_checkpoint
from moe_lm.training.optim import apply_current_settings, configure_optimizers
from moe_lm.training.warm_start import WarmStart


class MoELitModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig, tokenizer: Optional[Tokenizer] = None, domains: Sequence[str] = (),
                 experts: Sequence[Optional[int]] = ()) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.domains = cfg, tokenizer, list(domains)
        self.model = MoETransformer(cfg.model)
        self.model.gradient_checkpointing = cfg.trainer.gradient_checkpointing
        self.warm = WarmStart(cfg, experts, self.domains)
        self.finite = FiniteGuard(cfg.optimizer.lr)  # a non-finite step is never applied (finite_guard.py)
        # grow.freeze_old: the checkpoint's routed experts stay as loaded
        frozen = cfg.grow.domain and cfg.grow.freeze_old
        self.frozen = FrozenExperts(cfg.model.n_routed_experts - 1) if frozen else None
        self.val_loss = MeanMetric()  # token-weighted: each batch's mean counts by its number of targets
        self.val_domain_loss = torch.nn.ModuleList(MeanMetric() for _ in self.domains)  # one val loader each
        # sum of the current optimizer step's micro-batch losses
        self.register_buffer("step_loss", torch.zeros(()), persistent=False)

    def forward(self, input_ids: torch.Tensor):
        return self.model(input_ids)

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:  # the balance loss sees the global batch's expert loads
            for moe in self.model.moe_layers():
                moe.counts_reducer = mean_over_processes
        if self.cfg.grow.domain and self.trainer.ckpt_path is None:  # a fresh run: the checkpoint, one expert more
            self.print(grow_from_checkpoint(self.model, self.cfg, self.trainer.datamodule))
        if self.cfg.routing.router_init == "domain_mean" and self.trainer.ckpt_path is None:
            self._init_router()  # a fresh run only: a resumed one has its router rows in the checkpoint

    def _init_router(self) -> None:
        self.print(self.warm.init_router(self.model, self.trainer.datamodule, self.cfg.seed))

    @property
    def load_window(self):
        """The warm start's balance window (moe_lm/training/warm_start.py)."""
        return self.warm.load_window

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(loss to optimise, cross-entropy over valid targets, detached routing tensors for the callbacks)."""
        targets = batch["targets"]
        valid = targets != IGNORE_INDEX  # (B, T)
        # the LM head fused with the loss; padding targets count for nothing there, nor in the routing statistics
        # (fixed shapes throughout: a compiled model has no data-dependent shape to break on)
        forced = self.warm.begin(self.model, self.global_step, self.training, batch)
        out = self.model(batch["input_ids"], token_mask=valid, targets=targets,
                         ce_chunk_size=self.cfg.trainer.ce_chunk_size, forced_expert=forced)
        ce_sum = out.ce_sum
        ce = ce_sum / valid.sum()
        # Under gradient accumulation each micro-batch's share of the step is its number of valid targets (padding
        # varies), so the step's gradient is that of one big batch; Lightning divides the loss by `accumulate`.
        step_ce = (ce_sum * self.cfg.trainer.accumulate_grad_batches / batch["step_targets"]
                   if self.training and "step_targets" in batch else ce)
        m = self.cfg.model
        balance = m.use_aux_loss and not self.warm.balance_off
        loss = (step_ce + (m.aux_loss_coef * out.aux_loss if balance else 0)
                + (m.z_loss_coef * out.z_loss if m.use_z_loss else 0))
        extra = {}
        if out.lm_z_sum is not None:  # output z-loss (PaLM): the LM head's mean squared logsumexp
            extra["train/output_z_loss"] = out.lm_z_sum / valid.sum()
            loss = loss + m.output_z_loss_coef * extra["train/output_z_loss"]
        if out.mtp_loss is not None:
            extra["train/mtp_loss"] = out.mtp_loss
            loss = loss + m.mtp_loss_weight * out.mtp_loss
        guide, sup = self.warm.guidance(out.router_logits, batch, valid, self.global_step, self.training)
        if sup is not None:
            loss = loss + guide * sup
            self.log_dict({"train/guided_loss": sup.detach(), "train/guided_coef": guide})
        routing = {"ce": ce.detach(), "n_targets": valid.sum(), "token_mask": valid, "topk_idx": out.topk_idx,
                   "topk_weight": out.topk_weight, "expert_counts": out.expert_counts,
                   "router_entropy": out.router_entropy, "aux_loss": out.aux_loss.detach(), "z_loss": out.z_loss.detach(),
                   "dropped_slots": out.dropped_slots,
                   "extra_losses": {k: v.detach() for k, v in extra.items()}}
        return loss, ce, routing

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        loss, ce, routing = self._step(batch)
        self.step_loss = loss.detach() + self.step_loss  # checked for finiteness once per optimizer step, no sync here
        # with several processes, the mean over them: the global batch's loss (its shares hold equal token counts)
        self.log_dict({"train/loss": ce.detach(), "train/ppl": ce.detach().exp(), "train/aux_loss": routing["aux_loss"],
                       "train/z_loss": routing["z_loss"], **routing.pop("extra_losses")},
                      sync_dist=self.trainer.world_size > 1)
        return {"loss": loss, **routing}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        _, ce, routing = self._step(batch)
        self.val_loss.update(ce, routing["n_targets"])
        if self.domains:
            self.val_domain_loss[dataloader_idx].update(ce, routing["n_targets"])
        return routing

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, add_dataloader_idx=False)
        self.val_loss.reset()
        for name, metric in zip(self.domains, self.val_domain_loss):
            if metric.update_count:
                self.log(f"val/loss/{name}", metric.compute(), add_dataloader_idx=False)
            metric.reset()

    # ---- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        return configure_optimizers(self.model, self.cfg)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Clipped here rather than by the Trainer, whose AMP plugin refuses fused optimizers. Gradients are
        # already unscaled at this point for fp16 (the optimizer is not fused then).
        norm = clip_grad_norm(self, self.cfg.optimizer.grad_clip or float("inf"))
        self.log("train/grad_norm", norm)
        # fp16's grad scaler skips steps with inf gradients by design; a non-finite loss is never expected
        checked = self.step_loss if self.cfg.precision.resolved == "fp16" else self.step_loss + norm
        self.finite.check(optimizer, self.global_step + 1, self.step_loss, norm, checked)
        self.step_loss = torch.zeros_like(self.step_loss)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if is_log_step(self.trainer):
            self.finite.raise_if_seen()  # read with the logging step's other host values

    def on_train_end(self) -> None:
        """With several processes the router biases must be equal everywhere (each applies the same summed-load
        update); checked once at the end, since a silent divergence would route tokens differently per process."""
        self.finite.raise_if_seen()
        if self.trainer.world_size == 1:
            return
        for moe in self.model.moe_layers():
            bias = moe.gate.e_score_correction_bias
            high, low = bias.clone(), bias.clone()
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
            if not torch.equal(high, low):
                raise RuntimeError(f"router biases differ between processes by {(high - low).abs().max():.3g}")
        self.print(f"router biases equal in all {self.trainer.world_size} processes")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # fp16's grad scaler skips a step whose gradients are not finite (and lowers its scale): the router biases
        # then stay too, and that step's expert loads are dropped
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = scaler.get_scale() if scaler is not None else None
        if self.frozen is not None:
            self.frozen.before_step(self.model)
        super().optimizer_step(*args, **kwargs)
        if self.frozen is not None:
            self.frozen.after_step(self.model)
        layers = self.model.moe_layers()
        if scaler is not None and scaler.get_scale() < scale:
            for moe in layers:
                moe.tokens_per_expert.zero_()
            return
        if self.trainer.world_size > 1:
            for moe in layers:
                torch.distributed.all_reduce(moe.tokens_per_expert)
        self.warm.after_optimizer_step(self.model)
        self.model.update_router_biases()  # once per optimizer step, after accumulation

    # ---- checkpoint: what the model is ---------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.finite.raise_if_seen()  # no checkpoint after a non-finite step
        checkpoint["moe_lm_config"] = dataclasses.asdict(self.cfg)  # plain dict: safe to load
        checkpoint.update(self.warm.state())  # the balance window of the warm start (plain lists: safe to load)
        if self.tokenizer is not None:
            checkpoint["tokenizer_json"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_architecture(checkpoint, self.cfg.model)  # before the weights load: a clear message, not a shape error
        changed = apply_current_settings(checkpoint, self.model, self.cfg)  # before the optimizer state loads
        self.warm.load_state(checkpoint)
        if changed:
            rank_zero_warn("resuming with changed optimizer/schedule settings, applied from this step on:\n  "
                           + "\n  ".join(changed))
