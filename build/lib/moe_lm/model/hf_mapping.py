"""Map moe_lm weights to HF transformers' DeepseekV3 (sigmoid scoring) / DeepseekV2 (softmax) layout.

The model was named for this: every tensor keeps its name under a `model.` prefix, except the
LM head (top level in HF). RoPE uses DeepSeek's interleaved-pair layout, which DeepseekV3 reads with
`rope_interleave=True` and DeepseekV2 reads natively. Only MLA models export.
"""

from __future__ import annotations

from typing import Any

import torch

from moe_lm.config import ModelConfig


def hf_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for `DeepseekV3Config` (sigmoid) or `DeepseekV2Config` (softmax)."""
    if cfg.attention != "mla":
        raise ValueError("model.attention: only MLA models export to the DeepSeek format")
    kw: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.dense_intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, n_shared_experts=cfg.n_shared_experts,
        n_routed_experts=cfg.n_routed_experts, routed_scaling_factor=cfg.routed_scaling_factor,
        kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
        qk_nope_head_dim=cfg.qk_nope_head_dim, v_head_dim=cfg.v_head_dim, num_experts_per_tok=cfg.top_k,
        first_k_dense_replace=cfg.first_k_dense, norm_topk_prob=cfg.norm_topk_prob, hidden_act=cfg.activation,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, attention_bias=False,
        n_group=1, topk_group=1,
    )
    if cfg.scoring == "sigmoid":
        kw["rope_interleave"] = True
    else:
        kw["topk_method"] = "greedy"
    return kw


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a moe_lm state dict to the HF DeepSeek one (runtime-only buffers dropped)."""
    out = {}
    for name, t in state_dict.items():
        if name.endswith("tokens_per_expert"):
            continue
        out[name if name.startswith("lm_head.") else "model." + name] = t
    return out
