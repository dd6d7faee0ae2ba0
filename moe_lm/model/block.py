"""Pre-norm decoder block: x + attn(norm(x)), then x + ffn(norm(x)); the FFN is dense or MoE.

Names follow HF DeepseekV3DecoderLayer: self_attn, mlp, input_layernorm, post_attention_layernorm.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moe_lm.config import ModelConfig
from moe_lm.model.attention import build_attention
from moe_lm.model.cache import KVCache
from moe_lm.model.layers import FeedForward, RMSNorm
from moe_lm.model.moe import MoE, MoEStats


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, dense: bool = False) -> None:
        super().__init__()
        self.is_moe = cfg.is_moe_layer(layer_idx) and not dense
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = build_attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if self.is_moe:
            self.mlp: nn.Module = MoE(cfg)
        else:
            self.mlp = FeedForward(cfg.d_model, cfg.dense_intermediate_size, cfg.activation)
            self.mlp.down_proj.weight.is_residual_proj = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: Optional[KVCache] = None,
                attn_mask: Optional[torch.Tensor] = None, token_mask: Optional[torch.Tensor] = None,
                token_ids: Optional[torch.Tensor] = None,
                forced: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[MoEStats]]:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, cache, attn_mask))
        h = self.post_attention_layernorm(x)
        stats = None
        if self.is_moe:
            h, stats = self.mlp(h, token_mask, token_ids, forced)
        else:
            h = self.mlp(h)
        return x + self.dropout(h), stats
