"""Which experts the tokens go to, watched from outside the LightningModule.

Training (at logging steps): expert load per MoE layer (`moe/expert_load/layer{l}/expert{e}`), load CV, max
violation, dead experts, router entropy, the share of token slots dropped over capacity (`moe/dropped_frac`,
model.moe_impl=capacity only), and on domain data each domain's share per expert
(`moe/domain_load/<domain>/expert{e}`). Validation: the domain x expert matrix over the whole validation set,
per layer and averaged (`routing/...`), the specialisation scores (`spec/...`, moe_lm/eval/specialisation.py),
and under `<run>/routing/` a JSON of both per validation step and the heatmap with each domain's own expert
outlined. Padding counts nowhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch

from moe_lm.eval.routing import domain_expert_counts, routing_stats, shares
from moe_lm.eval.specialisation import specialisation_metrics
from moe_lm.training.callbacks import at_optimizer_step, is_log_step
from moe_lm.training.distributed import sum_over_processes


class RoutingMonitor(L.Callback):
    def __init__(self, domains: Sequence[str], n_experts: int, first_moe_layer: int,
                 experts: Sequence[Optional[int]] = ()) -> None:
        self.domains, self.E, self.first = list(domains), n_experts, first_moe_layer
        self.experts = list(experts) or [None] * len(self.domains)  # the routed expert mapped to each domain
        self._val: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (L, D, E) all and top-1 slots this epoch

    def _domain_counts(self, outputs: dict[str, Any], batch: dict[str, torch.Tensor], top1: bool = False) -> torch.Tensor:
        idx = outputs["topk_idx"]  # (L, N, K)
        if top1:  # each token's highest-weighted expert
            idx = idx.gather(-1, outputs["topk_weight"].argmax(-1, keepdim=True))  # (L, N, 1)
        return domain_expert_counts(idx, batch["domain"], len(self.domains), self.E, outputs["token_mask"])

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        if outputs.get("expert_counts") is None or not at_optimizer_step(trainer, batch_idx) or not is_log_step(trainer):
            return
        s = routing_stats(sum_over_processes(outputs["expert_counts"]))  # the global batch's loads
        metrics = {"moe/load_cv": s["load_cv"], "moe/max_violation": s["max_violation"],
                   "moe/dead_experts": s["dead_experts"].float(), "moe/router_entropy": outputs["router_entropy"]}
        if outputs.get("dropped_slots") is not None:  # moe_impl=capacity: slots over an expert's capacity
            slots = outputs["topk_idx"].numel()  # L * N * K
            metrics["moe/dropped_frac"] = sum_over_processes(outputs["dropped_slots"]).float() / (
                slots * trainer.world_size)
        metrics.update({f"moe/expert_load/layer{layer + self.first}/expert{e}": frac
                        for layer, row in enumerate(s["load"]) for e, frac in enumerate(row)})
        if self.domains and "domain" in batch:
            counts = sum_over_processes(self._domain_counts(outputs, batch).sum(0))  # (D, E), all MoE layers together
            frac = shares(counts)
            metrics.update({f"moe/domain_load/{self.domains[d]}/expert{e}": frac[d, e]
                            for d in counts.sum(-1).nonzero().flatten().tolist() for e in range(self.E)})
        pl_module.log_dict(metrics)

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if self.domains and outputs.get("topk_idx") is not None:
            counts = (self._domain_counts(outputs, batch), self._domain_counts(outputs, batch, top1=True))
            self._val = counts if self._val is None else (self._val[0] + counts[0], self._val[1] + counts[1])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        val, self._val = self._val, None
        if val is None or trainer.sanity_checking:
            return
        counts, top1 = val
        frac = shares(counts)  # (L, D, E)
        mean = frac.mean(0)
        metrics = {f"routing/{d}/expert{e}": mean[i, e] for i, d in enumerate(self.domains) for e in range(self.E)}
        metrics.update({f"routing/layer{layer + self.first}/{d}/expert{e}": frac[layer, i, e]
                        for layer in range(frac.shape[0]) for i, d in enumerate(self.domains) for e in range(self.E)})
        spec = specialisation_metrics(counts.cpu(), top1.cpu(), self.domains, self.experts)
        metrics.update({f"spec/{k}": v for k, v in spec.items()})
        pl_module.log_dict(metrics, add_dataloader_idx=False)
        if trainer.is_global_zero and trainer.default_root_dir:
            self._write(trainer, counts.cpu(), top1.cpu(), mean.cpu(), spec)

    def _write(self, trainer, counts: torch.Tensor, top1: torch.Tensor, mean: torch.Tensor, spec: dict[str, float]) -> None:
        """`routing/step<N>.json` (the counts, shares and scores) and the heatmap beside it."""
        from moe_lm.data.files import write_json_atomic
        from moe_lm.eval.plots import routing_heatmap

        step = trainer.global_step
        root = Path(trainer.default_root_dir) / "routing"
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / f"step{step:07d}.json", {
            "step": step, "domains": self.domains, "experts": self.experts, "first_moe_layer": self.first,
            "counts": counts.tolist(), "top1_counts": top1.tolist(), "shares": mean.tolist(), "spec": spec})
        path = routing_heatmap(mean, self.domains, trainer.default_root_dir, step, self.experts)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="routing/heatmap", images=[str(path)])
