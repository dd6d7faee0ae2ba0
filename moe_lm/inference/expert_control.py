"""Steer the routed experts at inference: `experts.drop=[DOMAIN,...]` (never chosen: each token's top-k is taken
over the other experts and its weights renormalised over them, as the knockout evaluation does) and
`experts.force=DOMAIN` (always one of each token's top-k slots, with its own router weight: the forced warm
start's rule), in every MoE layer. Experts are named by the domain the checkpoint's data config maps to them
(`data.domains.<name>.expert`), or by number.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from moe_lm.config import ConfigError, ExpertControlConfig
from moe_lm.inference.logit_lens import expert_names
from moe_lm.model import MoETransformer


def expert_domains(run_cfg: dict[str, Any]) -> dict[str, int]:
    """{domain: its routed expert} from a checkpoint's config (empty when it was trained without domains)."""
    return {name: e for e, name in expert_names(run_cfg).items()}


def resolve_expert(name: str, key: str, domains: dict[str, int], n_experts: int) -> int:
    """The routed expert `name` means: a domain of the checkpoint, or a number; anything else names `key`."""
    if name in domains:
        return domains[name]
    if name.isdigit() and int(name) < n_experts:
        return int(name)
    known = ", ".join(f"{d} (E{e})" for d, e in domains.items()) or "none: the run had no expert domains"
    raise ConfigError(f"{key}: {name!r} is neither a domain of the checkpoint nor a routed expert 0..{n_experts - 1}; "
                      f"its expert domains: {known}")


def resolve(control: ExpertControlConfig, model: MoETransformer, run_cfg: dict[str, Any]
            ) -> tuple[list[int], Optional[int]]:
    """(dropped experts, forced expert or None), checked against the model before any work."""
    cfg = model.cfg
    key = "experts.drop" if control.drop else "experts.force"
    if not model.moe_layers():
        raise ConfigError(f"{key}: the model {cfg.name} is dense: it has no routed experts to steer")
    if cfg.router_type != "token_choice":
        raise ConfigError(f"{key}: needs token_choice routing, the model has {cfg.router_type}")
    domains, E = expert_domains(run_cfg), cfg.n_routed_experts
    drop = [resolve_expert(d, "experts.drop", domains, E) for d in control.drop]
    force = resolve_expert(control.force, "experts.force", domains, E) if control.force else None
    if len(set(drop)) != len(drop) or force in drop:
        raise ConfigError(f"experts.drop: {control.drop} (force {control.force!r}) names one expert twice")
    if E - len(drop) < cfg.top_k:
        raise ConfigError(f"experts.drop: dropping {len(drop)} of {E} routed experts leaves fewer than "
                          f"top_k={cfg.top_k}")
    return drop, force


def set_expert_control(model: MoETransformer, drop: list[int], force: Optional[int]) -> None:
    """Every MoE layer's router: `drop` never chosen, `force` always in the top-k (both empty/None: plain)."""
    E = model.cfg.n_routed_experts
    for moe in model.moe_layers():
        mask = torch.zeros(E, dtype=torch.bool, device=moe.gate.weight.device)
        mask[drop] = True
        moe.gate.removed_experts = mask if drop else None
        moe.gate.always_expert = force


def apply_expert_control(model: MoETransformer, control: ExpertControlConfig, run_cfg: dict[str, Any]) -> str:
    """Resolve and set experts.*; a line saying what was set ('' when nothing)."""
    if not control.active:
        return ""
    drop, force = resolve(control, model, run_cfg)
    set_expert_control(model, drop, force)
    names = expert_names(run_cfg)
    label = (lambda e: f"E{e}" + (f" ({names[e]})" if e in names else ""))
    parts = ([f"dropped {', '.join(map(label, drop))}"] if drop else []) + (
        [f"forced {label(force)}"] if force is not None else [])
    return "experts: " + "; ".join(parts) + " in every MoE layer"
