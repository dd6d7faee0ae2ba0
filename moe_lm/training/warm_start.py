"""The experts' warm start (conf/routing/default.yaml), in the first `data.round_robin_steps` optimizer steps:

- warm_routing=forced: each expert domain's tokens (or those of routing.forced_domains) hold their expert in
  every top-k (moe_lm/training/guidance.py);
- warm_routing=guided: a router supervision term, annealed to 0 at the warm start's end (forced_guided: both);
- warm_balance: the balance loss and the bias update over this batch (batch), over the last steps' loads, one
  step per domain of the round-robin cycle (window), or not at all (off);
- router_init=domain_mean: each domain's router row from its mean router input, on a fresh run.

After the warm start the usual balancing takes over. The LightningModule calls `begin` before each forward,
`guidance` for the extra loss term and `after_optimizer_step` once per step; the balance window is saved in the
checkpoint (plain lists).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional, Sequence

import torch
from torch import nn

from moe_lm.config import TrainConfig
from moe_lm.data.mixture import round_robin_order
from moe_lm.model import MoETransformer
from moe_lm.training.guidance import expert_targets, forced_experts, guided_coef, router_supervision_loss


class WarmStart(nn.Module):
    """The warm start's state: each domain's expert (a buffer: it follows the model's device), the balance window,
    and whether the current optimizer step is in the warm start."""

    def __init__(self, cfg: TrainConfig, experts: Sequence[Optional[int]], domains: Sequence[str]) -> None:
        super().__init__()
        self.routing, self.steps = cfg.routing, getattr(cfg.data, "round_robin_steps", 0)
        experts = list(experts) or [None] * len(domains)
        # routed expert of each domain (-1: none), and the one its tokens are forced to (routing.forced_domains)
        self.register_buffer("domain_expert", expert_targets(experts), persistent=False)
        forced = [e if not cfg.routing.forced_domains or d in cfg.routing.forced_domains else None
                  for d, e in zip(domains, experts)]
        self.register_buffer("forced_expert", expert_targets(forced), persistent=False)
        # warm_balance=window: the (L, E) expert loads of the last steps, as many as the domains cycled
        window = len(round_robin_order(cfg.data)) if hasattr(cfg.data, "domains") else 1
        self.load_window: deque[torch.Tensor] = deque(maxlen=max(1, window))
        self.now = False  # whether the current optimizer step is in the warm start

    def begin(self, model: MoETransformer, step: int, training: bool, batch: dict[str, torch.Tensor]
              ) -> Optional[torch.Tensor]:
        """Set up routing and balance for this micro-batch; the forced experts (B, T) or None."""
        self.now = warm = training and step < self.steps
        if self.routing.warm_balance == "window":  # the aux loss's loads: this batch's and the window's earlier ones
            prior, earlier = None, list(self.load_window)[1 - self.load_window.maxlen:]  # the last n - 1 steps
            if warm and earlier and self.load_window.maxlen > 1:
                stacked = torch.stack([t.to(self.domain_expert.device) for t in earlier])  # (n - 1, L, E)
                shares = stacked / stacked.sum(-1, keepdim=True).clamp_min(1)
                prior = [(layer, len(earlier)) for layer in shares.sum(0)]
            for i, moe in enumerate(model.moe_layers()):
                moe.balance_prior = None if prior is None else prior[i]
        if warm and self.routing.warm_routing in ("forced", "forced_guided"):
            return forced_experts(batch["domain"], self.forced_expert, batch["input_ids"].shape[1])
        return None

    @property
    def balance_off(self) -> bool:
        """The balance loss is left out of this step (warm_balance=off inside the warm start)."""
        return self.now and self.routing.warm_balance == "off"

    def guidance(self, router_logits: torch.Tensor, batch: dict[str, torch.Tensor], valid: torch.Tensor,
                 step: int, training: bool) -> tuple[float, Optional[torch.Tensor]]:
        """(coefficient, router supervision loss) of the guided warm start; (0, None) outside it."""
        coef = guided_coef(self.routing, step, self.steps) if training else 0.0
        if coef <= 0:  # exactly nothing outside the guided warm start
            return 0.0, None
        return coef, router_supervision_loss(router_logits, batch["domain"], self.domain_expert, valid)

    @torch.no_grad()
    def after_optimizer_step(self, model: MoETransformer) -> None:
        """Which loads the router-bias update balances: this step's (batch), none inside an `off` warm start, or
        the window's steps; after the warm start the window is cleared."""
        layers = model.moe_layers()
        scope = self.routing.warm_balance if self.now else "batch"
        if scope == "off":  # no bias update in the warm start
            for moe in layers:
                moe.tokens_per_expert.zero_()
        elif scope == "window" and layers:  # the bias sees the loads of the window's steps
            self.load_window.append(torch.stack([moe.tokens_per_expert for moe in layers]).detach().clone())
            device = self.domain_expert.device
            for moe, load in zip(layers, torch.stack([t.to(device) for t in self.load_window]).sum(0)):
                moe.tokens_per_expert.copy_(load)
        elif self.load_window:  # after the warm start: the usual balancing
            self.load_window.clear()
            for moe in layers:
                moe.balance_prior = None

    def state(self) -> dict[str, Any]:
        return {"balance_window": [t.tolist() for t in self.load_window]} if self.load_window else {}

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        self.load_window.clear()
        self.load_window.extend(torch.tensor(t) for t in checkpoint.get("balance_window", []))

    def init_router(self, model: MoETransformer, datamodule, seed: int) -> str:
        """router_init=domain_mean: each domain's router row from its mean router input; a line saying so."""
        from moe_lm.training.router_init import domain_batches, domain_mean_router_inputs, init_router_from_domains

        batches = domain_batches(datamodule.train_shards, datamodule.plan, self.routing.router_init_batches, seed)
        means = domain_mean_router_inputs(model, batches, len(self.domain_expert))
        experts = [None if e < 0 else e for e in self.domain_expert.tolist()]
        info = init_router_from_domains(model, means, experts)
        cos = torch.tensor(info["row_cosines"])  # (L, E', E')
        off = cos[:, ~torch.eye(cos.shape[-1], dtype=torch.bool)]
        return (f"router rows of experts {info['experts']} set from the domains' mean router inputs "
                f"({len(batches)} batches); cosine between rows: mean {off.mean():.3f}, max {off.max():.3f}")
