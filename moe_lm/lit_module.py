"""LightningModule: next-token loss + balance losses, AdamW groups, LR schedule, metrics.

Lightning owns the loop; the model (moe_lm.model) is plain PyTorch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torchmetrics.aggregation import MeanMetric

from moe_lm.config import TrainConfig
from moe_lm.data.text_lines import IGNORE_INDEX
from moe_lm.metrics import device_peak_flops, routing_stats
from moe_lm.model import MoETransformer
from moe_lm.model.counting import param_breakdown, train_flops_per_token
from moe_lm.schedule import lr_multiplier


class MoELitModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig, tokenizer: Optional[Tokenizer] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = MoETransformer(cfg.model)
        parts = param_breakdown(self.model, cfg.model)
        self.flops_per_token = train_flops_per_token(cfg.model, parts, cfg.data.seq_len)
        self.val_loss = MeanMetric()
        self.val_domains: list[str] = []  # one validation dataloader per domain (DomainDataModule)
        self.val_domain_loss = torch.nn.ModuleList()
        self.loss_history: list[tuple[int, float]] = []  # (optimizer step, train loss) for the loss curve
        self._t_last: Optional[float] = None
        self._tokens_since = 0

    def forward(self, input_ids: torch.Tensor):
        return self.model(input_ids)

    # ---- loss ---------------------------------------------------------------------------------
    def _losses(self, batch: dict[str, torch.Tensor]):
        targets = batch["targets"]
        valid = targets != IGNORE_INDEX  # (B, T)
        # logits (M, V): no LM head on padding; padding does not count in the routing statistics either
        out = self.model(batch["input_ids"], logits_at=valid, token_mask=valid)
        ce = F.cross_entropy(out.logits.float(), targets[valid])
        m = self.cfg.model
        loss = ce
        if m.use_aux_loss:
            loss = loss + m.aux_loss_coef * out.aux_loss
        if m.use_z_loss:
            loss = loss + m.z_loss_coef * out.z_loss
        return loss, ce, out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == 0 and batch_idx == 0:
            self._log_first_batch(batch)
        if "batch_id" in batch and hasattr(self.trainer.datamodule, "consumed"):
            # The data state saved in checkpoints. Set here, not in on_train_batch_end: callbacks (checkpoint
            # savers) run their batch-end hooks before the module's, and must already see this batch consumed.
            self.trainer.datamodule.consumed = int(batch["batch_id"]) + 1
        loss, ce, out = self._losses(batch)
        self._tokens_since += batch["input_ids"].numel()
        self.log_dict({"train/loss": ce.detach(), "train/ppl": ce.detach().exp(), "train/aux_loss": out.aux_loss.detach(),
                       "train/z_loss": out.z_loss.detach()}, prog_bar=False)
        self.log("loss", ce.detach(), prog_bar=True, logger=False)
        if out.expert_counts is not None and self._is_log_step():
            self._log_routing(out.expert_counts)
            self.log("moe/router_entropy", out.router_entropy)
            if "domain" in batch:
                self._log_domain_routing(out.topk_idx, batch["domain"], batch["input_ids"].shape[1])
        if self._at_accumulation_boundary(batch_idx):
            self.loss_history.append((self.global_step, float(ce.detach())))
        return loss

    def _at_accumulation_boundary(self, batch_idx: int) -> bool:
        return (batch_idx + 1) % self.cfg.trainer.accumulate_grad_batches == 0

    def _is_log_step(self) -> bool:
        return self.global_step % max(1, self.cfg.trainer.log_every_n_steps) == 0

    def _log_routing(self, counts: torch.Tensor) -> None:
        s = routing_stats(counts)
        metrics = {"moe/load_cv": s["load_cv"], "moe/max_violation": s["max_violation"],
                   "moe/dead_experts": s["dead_experts"].float()}
        first = self.cfg.model.first_k_dense
        for layer, row in enumerate(s["load"]):
            for e, frac in enumerate(row):
                metrics[f"moe/expert_load/layer{layer + first}/expert{e}"] = frac
        self.log_dict(metrics)

    def _log_domain_routing(self, topk_idx: torch.Tensor, domain: torch.Tensor, seq_len: int) -> None:
        """Fraction of each domain's token slots routed to each expert, averaged over MoE layers."""
        names = getattr(self.trainer.datamodule, "names", None) if self._trainer else None
        if not names:
            return
        E = self.cfg.model.n_routed_experts
        dom_of_slot = domain.repeat_interleave(seq_len)[None, :, None].expand_as(topk_idx)  # (L, N, K)
        counts = torch.zeros(len(names), E, device=topk_idx.device)
        counts.index_put_((dom_of_slot.flatten(), topk_idx.flatten()), torch.ones(topk_idx.numel(), device=counts.device),
                          accumulate=True)
        frac = counts / counts.sum(-1, keepdim=True).clamp_min(1)
        self.log_dict({f"moe/domain_load/{names[d]}/expert{e}": frac[d, e]
                       for d in domain.unique().tolist() for e in range(E)})

    def _log_first_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Decode sample 0 with its shifted targets, so an off-by-one in slicing is visible."""
        if self.tokenizer is None:
            return
        ids = batch["input_ids"][0].tolist()
        tgt = [t for t in batch["targets"][0].tolist() if t != IGNORE_INDEX]
        rows = [(self.tokenizer.id_to_token(i), self.tokenizer.id_to_token(t)) for i, t in zip(ids, tgt)][:16]
        text = ("first batch, sample 0\n  input : " + repr(self.tokenizer.decode(ids, skip_special_tokens=False))
                + "\n  target: " + repr(self.tokenizer.decode(tgt, skip_special_tokens=False))
                + "\n  (input -> target) " + " ".join(f"{a!r}->{b!r}" for a, b in rows))
        self.print(text)
        for logger in self.loggers:
            if hasattr(logger, "log_text"):
                logger.log_text(key="train/first_batch", columns=["input", "target"],
                                data=[[self.tokenizer.decode(ids), self.tokenizer.decode(tgt)]])

    def on_validation_epoch_start(self) -> None:
        names = getattr(self.trainer.datamodule, "names", None)
        if names and not self.val_domains:
            self.val_domains = list(names)
            self.val_domain_loss.extend(MeanMetric().to(self.device) for _ in names)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        _, ce, out = self._losses(batch)
        if self.val_domains and out.topk_idx is not None:
            self._routing_counts(out.topk_idx, batch["domain"], batch["input_ids"].shape[1])
        n = batch["targets"].numel()
        self.val_loss.update(ce, n)
        if self.val_domains:
            self.val_domain_loss[dataloader_idx].update(ce, n)

    def _routing_counts(self, topk_idx: torch.Tensor, domain: torch.Tensor, seq_len: int) -> None:
        """Accumulate (layer, domain, expert) token-slot counts over the validation epoch."""
        L, _, K = topk_idx.shape
        E, D = self.cfg.model.n_routed_experts, len(self.val_domains)
        if getattr(self, "_val_routing", None) is None:
            self._val_routing = torch.zeros(L, D, E, device=topk_idx.device)
        dom = domain.repeat_interleave(seq_len)[None, :, None].expand_as(topk_idx)  # (L, N, K)
        layer = torch.arange(L, device=topk_idx.device)[:, None, None].expand_as(topk_idx)
        self._val_routing.index_put_((layer.flatten(), dom.flatten(), topk_idx.flatten()),
                                     torch.ones(topk_idx.numel(), device=topk_idx.device), accumulate=True)

    def _log_routing_matrix(self) -> None:
        """Domain x expert fraction of each domain's tokens, per layer and averaged; numbers and a heatmap PNG."""
        counts = getattr(self, "_val_routing", None)
        self._val_routing = None
        if counts is None or self.trainer.sanity_checking:
            return
        frac = counts / counts.sum(-1, keepdim=True).clamp_min(1)  # (L, D, E)
        mean = frac.mean(0)
        first = self.cfg.model.first_k_dense
        metrics = {f"routing/{d}/expert{e}": mean[i, e] for i, d in enumerate(self.val_domains) for e in range(mean.shape[1])}
        metrics.update({f"routing/layer{l + first}/{d}/expert{e}": frac[l, i, e] for l in range(frac.shape[0])
                        for i, d in enumerate(self.val_domains) for e in range(frac.shape[2])})
        self.log_dict(metrics, add_dataloader_idx=False)
        if self.trainer.is_global_zero and self.trainer.default_root_dir:
            from moe_lm.plots import routing_heatmap

            path = routing_heatmap(mean.cpu(), self.val_domains, self.trainer.default_root_dir, self.global_step)
            for logger in self.loggers:
                if hasattr(logger, "log_image"):
                    logger.log_image(key="routing/heatmap", images=[str(path)])

    def on_validation_epoch_end(self) -> None:
        self._log_routing_matrix()
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, add_dataloader_idx=False)
        self.val_loss.reset()
        for name, metric in zip(self.val_domains, self.val_domain_loss):
            if metric.update_count:
                self.log(f"val/loss/{name}", metric.compute(), add_dataloader_idx=False)
            metric.reset()

    # ---- optimisation -------------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        # Clipped here rather than by the Trainer, whose AMP plugin refuses fused optimizers. Gradients are
        # already unscaled at this point for fp16 (the optimizer is not fused then).
        max_norm = self.cfg.optimizer.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        if self._is_log_step():
            self.log("train/grad_norm", norm)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.trainer.world_size > 1:
            for moe in self.model.moe_layers():
                torch.distributed.all_reduce(moe.tokens_per_expert)
        self.model.update_router_biases()  # once per optimizer step, after accumulation

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._at_accumulation_boundary(batch_idx) or not self._is_log_step():
            return
        now = time.perf_counter()
        if self._t_last is not None:
            tok_s = self._tokens_since * self.trainer.world_size / (now - self._t_last)
            peak = device_peak_flops(self.device, self.cfg.trainer.peak_flops) * self.trainer.world_size
            self.log_dict({"perf/tokens_per_s": tok_s, "perf/mfu": tok_s * self.flops_per_token / peak})
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self._t_last, self._tokens_since = now, 0

    def configure_optimizers(self):
        o = self.cfg.optimizer
        decay, no_decay, router = [], [], []
        for name, p in self.model.named_parameters():
            if ".mlp.gate.weight" in name:
                router.append(p)
            elif p.dim() < 2:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"params": decay, "weight_decay": o.weight_decay, "lr": o.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": o.lr},
            {"params": router, "weight_decay": 0.0, "lr": o.lr * o.router_lr_mult},
        ]
        groups = [g for g in groups if g["params"]]
        fused = o.fused and self.cfg.precision.resolved != "fp16"  # fp16's grad scaler must unscale before clipping
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused or None)
        # max_steps from config, never trainer.estimated_stepping_batches (it resets dataloader state).
        max_steps, sched_cfg = self.cfg.trainer.max_steps, self.cfg.scheduler
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(step, sched_cfg, max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoint ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["moe_lm_config"] = dataclasses.asdict(self.cfg)  # plain dict: safe to load
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        for logger in self.loggers:  # a resumed run continues the same wandb run
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if self.tokenizer is not None:
            checkpoint["tokenizer_json"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from moe_lm.checkpointing import CheckpointError, config_mismatch

        saved = checkpoint.get("moe_lm_config", {}).get("model")
        if saved is None:
            raise CheckpointError("train.resume: the checkpoint has no moe_lm config (not written by moe_lm.train?)")
        diff = config_mismatch(saved, dataclasses.asdict(self.cfg.model))
        if diff:
            raise CheckpointError("train.resume: the checkpoint is of another architecture:\n  " + "\n  ".join(diff))
        if "rng" in checkpoint:
            torch.set_rng_state(checkpoint["rng"]["torch"])
            if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
