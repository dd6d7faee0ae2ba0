"""moe_lm <-> HF transformers' DeepseekV3 (sigmoid scoring) / DeepseekV2 (softmax scoring), both ways.

The model was named for this: every tensor keeps its name under a `model.` prefix, except the LM head (top level
in HF). RoPE uses DeepSeek's interleaved-pair layout, which DeepseekV3 reads with `rope_interleave=True` and
DeepseekV2 reads natively. A config maps only where the HF class computes exactly the same function:

| moe_lm                                   | HF class     | router there                                          |
|------------------------------------------|--------------|-------------------------------------------------------|
| scoring=sigmoid (any norm_topk_prob,     | DeepseekV3   | sigmoid; bias on the choice only; optional top-k      |
|   with or without the aux-free bias)     |              | normalisation; x routed_scaling_factor                |
| scoring=softmax, norm_topk_prob=false,   | DeepseekV2   | softmax; greedy top-k; x routed_scaling_factor; no    |
|   use_aux_free_bias=false                |              | normalisation and no bias                             |

Anything else (GQA attention, softmax with normalised weights or a bias) is refused, naming the key. The
dense models (first_k_dense = n_layers) map to either class with no MoE layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from moe_lm.config import ConfigError, ModelConfig

ARCHITECTURES = {"deepseek_v3": "DeepseekV3ForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM"}
# ModelConfig fields that shape the weights or the function (the rest are training or runtime choices)
ARCHITECTURE_FIELDS = (
    "vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "rope_theta", "attention", "q_lora_rank",
    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_shared_experts", "n_routed_experts",
    "moe_intermediate_size", "top_k", "scoring", "norm_topk_prob", "routed_scaling_factor", "first_k_dense",
    "dense_intermediate_size", "activation", "tie_embeddings", "norm_eps", "qk_norm", "attn_softcap", "logit_softcap",
    "sliding_window", "window_pattern", "router_type", "mtp_depth")
HF_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}  # model.activation -> hidden_act of the (gated) DeepSeek MLP
# architecture switches the DeepSeek classes do not have: (key, its value there)
NOT_IN_DEEPSEEK = (("qk_norm", False), ("attn_softcap", 0.0), ("logit_softcap", 0.0), ("sliding_window", 0),
                   ("router_type", "token_choice"))


def has_moe_layers(cfg: ModelConfig) -> bool:
    return cfg.first_k_dense < cfg.n_layers


def hf_model_type(cfg: ModelConfig) -> str:
    """deepseek_v3 or deepseek_v2 for a config the HF class computes exactly; else a ConfigError naming the key."""
    k = "model."
    if cfg.attention != "mla":
        raise ConfigError(f"{k}attention: only MLA models export to the DeepSeek format (got {cfg.attention})")
    if cfg.activation not in HF_ACTIVATIONS:
        raise ConfigError(f"{k}activation: the DeepSeek MLP is gated; {cfg.activation} does not export "
                          f"(exportable: {', '.join(HF_ACTIVATIONS)})")
    for key, value in NOT_IN_DEEPSEEK:
        if getattr(cfg, key) != value:
            raise ConfigError(f"{k}{key}: the DeepSeek classes have no such switch; only {key}={value} exports "
                              f"(got {getattr(cfg, key)})")
    if cfg.n_shared_experts < 1 and has_moe_layers(cfg):
        raise ConfigError(f"{k}n_shared_experts: the DeepSeek classes always have a shared expert (got 0)")
    if cfg.scoring == "sigmoid" or not has_moe_layers(cfg):
        if has_moe_layers(cfg) and cfg.n_routed_experts < 2:
            raise ConfigError(f"{k}n_routed_experts: DeepseekV3's router needs >= 2 routed experts")
        return "deepseek_v3"
    if cfg.norm_topk_prob:
        raise ConfigError(f"{k}norm_topk_prob: transformers' DeepseekV2 (the class for softmax scoring) does not "
                          f"normalise the top-k weights; export needs norm_topk_prob=false or scoring=sigmoid "
                          f"(specialisation_ablation and scaling_ladder pin model.scoring=softmax to reproduce "
                          f"their documented numbers: add model.scoring=sigmoid to train an exportable model)")
    if cfg.use_aux_free_bias:
        raise ConfigError(f"{k}use_aux_free_bias: transformers' DeepseekV2 (the class for softmax scoring) applies "
                          f"no selection bias; export needs use_aux_free_bias=false or scoring=sigmoid")
    return "deepseek_v2"


def hf_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for `DeepseekV3Config` / `DeepseekV2Config` (which one: hf_model_type)."""
    kw: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.dense_intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, n_shared_experts=cfg.n_shared_experts,
        n_routed_experts=cfg.n_routed_experts, routed_scaling_factor=cfg.routed_scaling_factor,
        kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
        qk_nope_head_dim=cfg.qk_nope_head_dim, v_head_dim=cfg.v_head_dim, num_experts_per_tok=cfg.top_k,
        first_k_dense_replace=cfg.first_k_dense, norm_topk_prob=cfg.norm_topk_prob,
        hidden_act=HF_ACTIVATIONS[cfg.activation],
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, attention_bias=False,
        n_group=1, topk_group=1,
    )
    if hf_model_type(cfg) == "deepseek_v3":
        kw["rope_interleave"] = True
    else:
        kw["topk_method"] = "greedy"
    return kw


def hf_config_dict(cfg: ModelConfig, dtype: str, token_ids: dict[str, int]) -> dict[str, Any]:
    """config.json of the exported directory: the class, its arguments, the weights' dtype and the token ids."""
    model_type = hf_model_type(cfg)
    return {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type, **hf_config_kwargs(cfg),
            "torch_dtype": dtype, **token_ids}


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig | None = None,
                     per_expert: bool = False) -> dict[str, torch.Tensor]:
    """Rename a moe_lm state dict to the HF DeepSeek one (runtime-only buffers dropped). With `cfg`, exactly what the
    HF class holds: no multi-token-prediction module (a training aid), no LM head when it is tied, the selection
    bias zeroed where moe_lm does not apply it (V3 always adds it) and dropped where the class has none (V2).
    `per_expert`: the layout of files on disk (DeepSeek's own checkpoints, and what transformers writes and reads:
    `experts.{e}.{gate,up,down}_proj.weight`), instead of the fused (E, 2I, D) / (E, D, I) tensors transformers 5
    holds in memory."""
    v2 = cfg is not None and hf_model_type(cfg) == "deepseek_v2"
    out = {}
    for name, t in state_dict.items():
        if name.endswith("tokens_per_expert") or (cfg is not None and cfg.tie_embeddings and name == "lm_head.weight"):
            continue
        if name.startswith("mtp.") and cfg is not None:
            continue
        if name.endswith("e_score_correction_bias") and cfg is not None:
            if v2:
                continue
            if not cfg.use_aux_free_bias:
                t = torch.zeros_like(t)
        name = name if name.startswith("lm_head.") else "model." + name
        if per_expert and name.endswith(".experts.gate_up_proj"):
            gate, up = t.chunk(2, dim=1)  # (E, I, D) each
            for e in range(t.shape[0]):
                out[name.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate[e]
                out[name.replace("gate_up_proj", f"{e}.up_proj.weight")] = up[e]
        elif per_expert and name.endswith(".experts.down_proj"):
            for e in range(t.shape[0]):
                out[name.replace("down_proj", f"{e}.down_proj.weight")] = t[e]
        else:
            out[name] = t
    return out


def _fuse_experts(state: dict[str, torch.Tensor], prefix: str, n_experts: int) -> None:
    """experts.{e}.{gate,up,down}_proj.weight -> experts.gate_up_proj (E, 2I, D) and experts.down_proj (E, D, I)."""
    names = {p: [f"{prefix}.{e}.{p}.weight" for e in range(n_experts)] for p in ("gate_proj", "up_proj", "down_proj")}
    missing = [n for ns in names.values() for n in ns if n not in state]
    if missing:
        raise ConfigError(f"the weights lack {missing[:3]} (the config has {n_experts} routed experts)")
    part = {p: [state.pop(n) for n in ns] for p, ns in names.items()}
    state[f"{prefix}.gate_up_proj"] = torch.cat([torch.stack(part["gate_proj"]), torch.stack(part["up_proj"])], dim=1)
    state[f"{prefix}.down_proj"] = torch.stack(part["down_proj"])


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of to_hf_state_dict, from either expert layout (the tied LM head and the V2 routers' zero bias
    filled in)."""
    out = {name.removeprefix("model."): t for name, t in hf_state.items()}
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
        out["lm_head.weight"] = out["embed_tokens.weight"]
    for i in range(cfg.first_k_dense, cfg.n_layers):
        prefix = f"layers.{i}.mlp.experts"
        if f"{prefix}.0.gate_proj.weight" in out:
            _fuse_experts(out, prefix, cfg.n_routed_experts)
        out.setdefault(f"layers.{i}.mlp.gate.e_score_correction_bias", torch.zeros(cfg.n_routed_experts))
    return out


# HF config keys whose value must be this for moe_lm to compute the same function (None: absent or null is fine)
_REQUIRED = {"n_group": (1, None), "topk_group": (1, None), "attention_bias": (False, None),
             "mlp_bias": (False, None), "moe_layer_freq": (1, None), "rope_scaling": (None,)}


def model_config_from_hf(hf: dict[str, Any], base: ModelConfig, where: str = "config.json") -> ModelConfig:
    """The ModelConfig of an HF DeepseekV3/V2 config.json; training-only fields (balance losses, dropout, dispatch)
    come from `base`. What moe_lm cannot compute the same way is named (`where: key`)."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not one moe_lm reads (deepseek_v3, deepseek_v2)")
    for key, allowed in _REQUIRED.items():
        if hf.get(key) not in allowed:
            raise ConfigError(f"{where}: {key}={hf.get(key)!r} is not supported (moe_lm needs {allowed[0]!r})")
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{where}: rope_parameters.rope_type={rope.get('rope_type')!r} is not supported (default)")
    if model_type == "deepseek_v3" and hf.get("rope_interleave", True) is not True:
        raise ConfigError(f"{where}: rope_interleave=false is not supported (moe_lm's RoPE is interleaved)")
    if model_type == "deepseek_v2" and hf.get("topk_method", "greedy") != "greedy":
        raise ConfigError(f"{where}: topk_method={hf.get('topk_method')!r} is not supported (greedy)")
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        raise ConfigError(f"{where}: num_key_value_heads must equal num_attention_heads in MLA")
    v3 = model_type == "deepseek_v3"
    arch = dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], max_seq_len=hf["max_position_embeddings"],
        rope_theta=float(rope["rope_theta"]), attention="mla", q_lora_rank=hf.get("q_lora_rank"),
        kv_lora_rank=hf["kv_lora_rank"], qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"], v_head_dim=hf["v_head_dim"], n_shared_experts=hf["n_shared_experts"],
        n_routed_experts=hf["n_routed_experts"], moe_intermediate_size=hf["moe_intermediate_size"],
        top_k=hf["num_experts_per_tok"], scoring="sigmoid" if v3 else "softmax",
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)) if v3 else False,  # V2 ignores the key
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        first_k_dense=hf.get("first_k_dense_replace", 0), dense_intermediate_size=hf["intermediate_size"],
        activation=_activation(hf.get("hidden_act", "silu"), where),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), use_aux_free_bias=v3, mtp_depth=0, window_pattern="L",
        **dict(NOT_IN_DEEPSEEK))
    try:
        return dataclasses.replace(base, **arch)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def _activation(hidden_act: str, where: str) -> str:
    for ours, theirs in HF_ACTIVATIONS.items():
        if theirs == hidden_act:
            return ours
    raise ConfigError(f"{where}: hidden_act={hidden_act!r} is not supported ({', '.join(HF_ACTIVATIONS.values())})")
