"""Grow a trained MoE by one routed expert for a new domain (`grow.domain`, with init_from=ckpt:PATH;
conf/experiment/add_domain_expert.yaml), in the spirit of Branch-Train-MiX and FlexOlmo: the checkpoint's weights
are copied, and in every MoE layer the stacked expert weights, the router and its bias gain one row:

- the new expert: grow.init=shared, the shared expert's first moe_intermediate_size hidden units (its gate, up
  and down projections: with one shared expert, a copy of it); grow.init=most_used, a copy of the routed expert
  that the new domain's tokens use most in that layer (counted over `routing.router_init_batches` batches of the
  new domain, top-k slots); either times (1 + grow.noise * N(0, 1)) elementwise;
- its router row: the copied expert's row (most_used) or the mean of the old rows (shared), with the same
  noise; or, with grow.router_row=domain_mean, the new domain's mean router input less all domains' mean,
  scaled to the old rows' mean norm (routing.router_init=domain_mean's rule, for this row only); its bias: the
  mean of the old biases (so it starts neither favoured nor shunned);
- its load counter starts at zero.

Training then uses the forced warm start for the new domain (routing.forced_domains), so its tokens always reach
the new expert while the router learns to send them there. grow.freeze_old=true keeps the old experts' weights
as loaded: they are put back after every optimizer step (exact, whatever the optimizer's weight decay or
momentum would do).

Shape legend: E old routed experts, I moe_intermediate_size, D d_model.
"""

from __future__ import annotations

from typing import Optional

import torch

from moe_lm.config import ConfigError, TrainConfig
from moe_lm.model import MoETransformer
from moe_lm.training.upcycle import check_compatible, read_source

EXPERT_TENSORS = ("gate_up_proj", "up_proj", "down_proj", "act_scale", "act_shift")


def check_growable(src, cfg, key: str = "init_from") -> None:
    check_compatible(src, cfg, key)
    for f in ("moe_intermediate_size", "n_shared_experts", "first_k_dense", "router_type", "scoring"):
        if getattr(src, f) != getattr(cfg, f):
            raise ConfigError(f"{key}: the checkpoint has model.{f}={getattr(src, f)!r}, this run "
                              f"{getattr(cfg, f)!r}; growing keeps the architecture but for one expert")
    if cfg.n_routed_experts != src.n_routed_experts + 1:
        raise ConfigError(f"model.n_routed_experts: growing {src.n_routed_experts} experts by one needs "
                          f"{src.n_routed_experts + 1}, got {cfg.n_routed_experts}")


def shared_slice(source: dict[str, torch.Tensor], prefix: str, I: int) -> dict[str, torch.Tensor]:
    """The shared expert's first I hidden units, as one routed expert's tensors."""
    sh = f"{prefix}shared_experts."
    if f"{sh}down_proj.weight" not in source:
        raise ConfigError("grow.init: shared needs shared experts (model.n_shared_experts > 0); use most_used")
    out = {"down_proj": source[f"{sh}down_proj.weight"][:, :I]}  # (D, I)
    up = source[f"{sh}up_proj.weight"][:I]  # (I, D)
    if f"{sh}gate_proj.weight" in source:
        out["gate_up_proj"] = torch.cat([source[f"{sh}gate_proj.weight"][:I], up])  # (2I, D), gate rows first
    else:
        out["up_proj"] = up
    for n in ("act_scale", "act_shift"):
        if f"{sh}{n}" in source:
            out[n] = source[f"{sh}{n}"][:I]
    return out


def grown_state(source: dict[str, torch.Tensor], model: MoETransformer, rule: str, noise: float,
                most_used: Optional[list[int]] = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of `model` (E + 1 routed experts) from `source` (E): everything copied, one expert added per
    MoE layer by `rule`; most_used[l]: the expert copied in MoE layer l (rule most_used)."""
    g = torch.Generator().manual_seed(seed)

    def jitter(t: torch.Tensor) -> torch.Tensor:
        return t * (1 + noise * torch.randn(t.shape, generator=g, dtype=t.dtype)) if noise else t.clone()

    own = model.state_dict()
    state = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
    moe_layers = [i for i, layer in enumerate(model.layers) if layer.is_moe]
    for l, i in enumerate(moe_layers):
        p = f"layers.{i}.mlp."
        e = most_used[l] if rule == "most_used" else None
        new = ({n: source[f"{p}experts.{n}"][e] for n in EXPERT_TENSORS if f"{p}experts.{n}" in source}
               if e is not None else shared_slice(source, p, model.cfg.moe_intermediate_size))
        for n, t in new.items():
            state[f"{p}experts.{n}"] = torch.cat([source[f"{p}experts.{n}"], jitter(t)[None]])  # (E + 1, ...)
        rows = source[f"{p}gate.weight"]  # (E, D)
        row = rows[e] if e is not None else rows.mean(0)
        state[f"{p}gate.weight"] = torch.cat([rows, jitter(row)[None]])
        bias = source[f"{p}gate.e_score_correction_bias"]
        state[f"{p}gate.e_score_correction_bias"] = torch.cat([bias, bias.mean()[None]])
    return state


@torch.no_grad()
def most_used_experts(model: MoETransformer, batches: list[torch.Tensor]) -> list[int]:
    """Per MoE layer, the routed expert holding the most top-k slots of these batches' tokens."""
    was = model.training
    model.eval()
    try:
        counts = sum(model.forward(ids.to(next(model.parameters()).device)).expert_counts for ids in batches)
    finally:
        model.train(was)
    return counts.argmax(-1).tolist()  # (L,)


def grow_from_checkpoint(model: MoETransformer, cfg: TrainConfig, datamodule) -> str:
    """Load init_from's checkpoint into `model`, one routed expert larger; a line saying what was done."""
    from moe_lm.training.router_init import domain_batches

    path = cfg.init_from.removeprefix("ckpt:")
    src_cfg, source, _ = read_source(path)
    check_growable(src_cfg, model.cfg)
    g = cfg.grow
    most_used = None
    if g.init == "most_used":
        old = MoETransformer(src_cfg)
        old.load_state_dict(source)
        d = datamodule.names.index(g.domain)
        batches = [ids for dom, ids in domain_batches(datamodule.train_shards, datamodule.plan,
                                                      cfg.routing.router_init_batches, cfg.seed) if dom == d]
        most_used = most_used_experts(old, batches)
    state = grown_state(source, model, g.init, g.noise, most_used, cfg.seed)
    own = model.state_dict()
    missing = sorted(set(k for k, _ in model.named_parameters()) - set(state))
    if missing:
        raise ConfigError(f"init_from: {path} lacks {missing[:3]} for growing")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    if g.router_row == "domain_mean":  # the new row from the new domain's mean router input (router_init.py's rule)
        from moe_lm.training.router_init import domain_mean_router_inputs, init_router_from_domains

        names = datamodule.names
        batches = domain_batches(datamodule.train_shards, datamodule.plan, cfg.routing.router_init_batches, cfg.seed)
        means = domain_mean_router_inputs(model, batches, len(names))
        init_router_from_domains(model, means, [src_cfg.n_routed_experts if n == g.domain else None for n in names])
    how = (f"a copy of expert(s) {most_used} per MoE layer" if most_used is not None
           else "the shared expert's first hidden units")
    row = "its domain's mean router input" if g.router_row == "domain_mean" else "the rule"
    return (f"grow: {path}'s {src_cfg.n_routed_experts} routed experts + expert {src_cfg.n_routed_experts} for "
            f"{g.domain}, from {how} (noise {g.noise:g}), router row from {row}; old experts "
            f"{'frozen' if g.freeze_old else 'trainable'}")


class FrozenExperts:
    """grow.freeze_old: the first `n` routed experts' weights are put back after every optimizer step."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.saved: Optional[list[torch.Tensor]] = None

    def _tensors(self, model: MoETransformer) -> list[torch.Tensor]:
        return [p for moe in model.moe_layers() for name, p in moe.experts.named_parameters()
                if name in EXPERT_TENSORS]

    @torch.no_grad()
    def before_step(self, model: MoETransformer) -> None:
        if self.saved is None:  # the weights as loaded (or as resumed: they were kept equal to those)
            self.saved = [p[:self.n].detach().clone() for p in self._tensors(model)]

    @torch.no_grad()
    def after_step(self, model: MoETransformer) -> None:
        for p, old in zip(self._tensors(model), self.saved):
            p[:self.n].copy_(old)
