"""`init_from=ckpt:PATH`: start from a moe_lm checkpoint's weights; a dense checkpoint is upcycled into the MoE.

Upcycling (Komatsuzaki et al. 2022, "Sparse Upcycling"): every tensor whose name and shape the two models share is
copied (embeddings, attention, norms, dense layers). In each layer that is dense in the checkpoint and MoE in this
model, every routed expert becomes a copy of the dense MLP; with model.moe_intermediate_size = dense width / G for
an integer G > 1, the dense MLP is split into G slices of its hidden units (fine-grained experts) and expert e
takes slice e mod G. The shared experts take slices too, with their down projection zeroed, and the router keeps
its random init.

With G = 1 the upcycled model computes the dense model's function exactly at step 0: the routed output is
sum_k w_k * MLP(x) = MLP(x) when the top-k weights sum to 1 (model.norm_topk_prob, routed_scaling_factor 1) and
the shared experts add 0. With G > 1, or weights that do not sum to 1, it starts near the dense model, not on it.
"""

from __future__ import annotations

import torch

from moe_lm.config import ConfigError, ModelConfig
from moe_lm.model import MoETransformer

# model.* keys the two models must share for the copied tensors to mean the same thing
SHARED_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "attention", "q_lora_rank", "kv_lora_rank",
                 "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_kv_heads", "head_dim", "rope_theta",
                 "tie_embeddings", "norm_eps", "activation", "qk_norm")


def check_compatible(source: ModelConfig, target: ModelConfig, key: str = "init_from") -> None:
    for f in SHARED_FIELDS:
        if getattr(source, f) != getattr(target, f):
            raise ConfigError(f"{key}: the checkpoint has model.{f}={getattr(source, f)!r}, this run "
                              f"{getattr(target, f)!r}; upcycling copies weights, so they must agree")


def _slices(width: int, dense_width: int, key: str) -> int:
    if dense_width % width:
        raise ConfigError(f"{key}: model.moe_intermediate_size={width} must divide the checkpoint's "
                          f"dense_intermediate_size={dense_width} (1 piece: a copy; G pieces: fine-grained experts)")
    return dense_width // width


def upcycled_state(source: dict[str, torch.Tensor], src_cfg: ModelConfig, model: MoETransformer,
                   key: str = "init_from") -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the state dict to load into `model`, the names of the tensors left at their random init)."""
    cfg = model.cfg
    check_compatible(src_cfg, cfg, key)
    own = model.state_dict()
    state = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
    for i, layer in enumerate(model.layers):
        dense = f"layers.{i}.mlp."
        if not layer.is_moe or f"{dense}down_proj.weight" not in source:
            continue
        G = _slices(cfg.moe_intermediate_size, src_cfg.dense_intermediate_size, key)
        I, E = cfg.moe_intermediate_size, cfg.n_routed_experts
        part = {n: source[f"{dense}{n}"] for n in ("gate_proj.weight", "up_proj.weight", "down_proj.weight",
                                                      "act_scale", "act_shift") if f"{dense}{n}" in source}
        gated = "gate_proj.weight" in part

        def hidden_units(t: torch.Tensor, g: int, dim: int = 0) -> torch.Tensor:
            return t.narrow(dim, g * I, I)  # the hidden units of slice g

        def stacked(name: str, n: int, dim: int = 0) -> torch.Tensor:  # experts 0..n-1 take slices e mod G
            return torch.stack([hidden_units(part[name], e % G, dim) for e in range(n)])

        ins = stacked("up_proj.weight", E)  # (E, I, D)
        if gated:
            ins = torch.cat([stacked("gate_proj.weight", E), ins], dim=1)  # (E, 2I, D), gate rows first
        state[f"{dense}experts.{'gate_up_proj' if gated else 'up_proj'}"] = ins
        state[f"{dense}experts.down_proj"] = stacked("down_proj.weight", E, dim=1)  # (E, D, I)
        for n in ("act_scale", "act_shift"):
            if n in part:
                state[f"{dense}experts.{n}"] = stacked(n, E)  # (E, I)
        if layer.mlp.shared_experts is not None:  # slices of the dense MLP too, adding nothing at step 0
            shared, S = f"{dense}shared_experts.", cfg.n_shared_experts
            for n in part:
                if n != "down_proj.weight":
                    state[shared + n] = stacked(n, S).flatten(0, 1)  # (S*I, ...)
            state[shared + "down_proj.weight"] = torch.zeros_like(own[shared + "down_proj.weight"])
    random = sorted(k for k, _ in model.named_parameters() if k not in state)  # (buffers start at zero)
    return state, random


def exact_upcycle(src_cfg: ModelConfig, cfg: ModelConfig) -> list[str]:
    """Why the upcycled model will not start on the dense model's function (empty: it will)."""
    why = []
    if src_cfg.dense_intermediate_size != cfg.moe_intermediate_size:
        why.append("model.moe_intermediate_size is a slice of the dense width (fine-grained experts)")
    if cfg.router_type == "token_choice" and not (cfg.norm_topk_prob and cfg.routed_scaling_factor == 1.0):
        why.append("the top-k weights do not sum to 1 (model.norm_topk_prob, model.routed_scaling_factor)")
    if cfg.router_type == "expert_choice":
        why.append("expert choice gives tokens 0..E experts")
    return why


def read_source(path: str, key: str = "init_from") -> tuple[ModelConfig, dict[str, torch.Tensor], str | None]:
    """(the checkpoint's model config, its model weights by model-relative name, its tokenizer JSON or None)."""
    from moe_lm.io.checkpoint import load_checkpoint, model_config_from

    ckpt = load_checkpoint(path, key)
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return model_config_from(ckpt["moe_lm_config"]["model"], key), weights, ckpt.get("tokenizer_json")


def load_upcycled(model: MoETransformer, path: str, key: str = "init_from") -> None:
    src_cfg, source, _ = read_source(path, key)
    state, random = upcycled_state(source, src_cfg, model, key)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    print(f"init_from: weights from {path}; left at random init: {', '.join(random) or 'none'}")
    why = exact_upcycle(src_cfg, model.cfg)
    if why and any(".experts." in k for k in state):
        print("init_from: the upcycled model starts near the dense one, not on it: " + "; ".join(why))
