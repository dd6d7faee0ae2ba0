"""Which experts the tokens go to, watched from outside the LightningModule.

Training (at logging steps): expert load per MoE layer (`moe/expert_load/layer{l}/expert{e}`), load CV, max
violation, dead experts, router entropy, and on domain data each domain's share per expert
(`moe/domain_load/<domain>/expert{e}`). Validation: the domain x expert matrix over the whole validation set,
per layer and averaged (`routing/...`), and its heatmap under `<run>/routing/`. Padding counts nowhere.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import lightning as L
import torch

from moe_lm.eval.routing import domain_expert_counts, routing_stats, shares
from moe_lm.training.callbacks import at_optimizer_step, is_log_step


class RoutingMonitor(L.Callback):
    def __init__(self, domains: Sequence[str], n_experts: int, first_moe_layer: int) -> None:
        self.domains, self.E, self.first = list(domains), n_experts, first_moe_layer
        self._val_counts: Optional[torch.Tensor] = None  # (L, D, E) over the validation epoch

    def _domain_counts(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return domain_expert_counts(outputs["topk_idx"], batch["domain"], len(self.domains), self.E, outputs["token_mask"])

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        if outputs.get("expert_counts") is None or not at_optimizer_step(trainer, batch_idx) or not is_log_step(trainer):
            return
        s = routing_stats(outputs["expert_counts"])
        metrics = {"moe/load_cv": s["load_cv"], "moe/max_violation": s["max_violation"],
                   "moe/dead_experts": s["dead_experts"].float(), "moe/router_entropy": outputs["router_entropy"]}
        metrics.update({f"moe/expert_load/layer{layer + self.first}/expert{e}": frac
                        for layer, row in enumerate(s["load"]) for e, frac in enumerate(row)})
        if self.domains and "domain" in batch:
            frac = shares(self._domain_counts(outputs, batch).sum(0))  # (D, E), all MoE layers together
            metrics.update({f"moe/domain_load/{self.domains[d]}/expert{e}": frac[d, e]
                            for d in batch["domain"].unique().tolist() for e in range(self.E)})
        pl_module.log_dict(metrics)

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if self.domains and outputs.get("topk_idx") is not None:
            counts = self._domain_counts(outputs, batch)
            self._val_counts = counts if self._val_counts is None else self._val_counts + counts

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        counts, self._val_counts = self._val_counts, None
        if counts is None or trainer.sanity_checking:
            return
        frac = shares(counts)  # (L, D, E)
        mean = frac.mean(0)
        metrics = {f"routing/{d}/expert{e}": mean[i, e] for i, d in enumerate(self.domains) for e in range(self.E)}
        metrics.update({f"routing/layer{layer + self.first}/{d}/expert{e}": frac[layer, i, e]
                        for layer in range(frac.shape[0]) for i, d in enumerate(self.domains) for e in range(self.E)})
        pl_module.log_dict(metrics, add_dataloader_idx=False)
        if trainer.is_global_zero and trainer.default_root_dir:
            from moe_lm.eval.plots import routing_heatmap

            path = routing_heatmap(mean.cpu(), self.domains, trainer.default_root_dir, trainer.global_step)
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
                    logger.log_image(key="routing/heatmap", images=[str(path)])
