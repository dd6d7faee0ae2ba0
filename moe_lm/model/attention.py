"""Attention: Multi-head Latent Attention (DeepSeek-V2/V3) and grouped-query attention.

Shape legend: B batch, T new tokens, S cached + new tokens, D model width, H query heads,
G kv heads (GQA), C kv_lora_rank (latent), R qk_rope_head_dim, N qk_nope_head_dim,
V v_head_dim, Q q_lora_rank.

Parameter names follow HF transformers' DeepseekV3Attention (q_proj | q_a_proj/q_a_layernorm/q_b_proj,
kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj), so export to that format is a rename.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moe_lm.config import ModelConfig
from moe_lm.model.cache import KVCache
from moe_lm.model.layers import RMSNorm, apply_rope


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
          attn_mask: Optional[torch.Tensor], dropout: float, enable_gqa: bool = False) -> torch.Tensor:
    """Causal SDPA. q: (B, H, T, E), k: (B, H|G, S, E), v: (B, H|G, S, Ev) -> (B, H, T, Ev).

    Without a mask, T == S is plain causal; with a KV cache (T < S) the caller passes a
    bottom-right-aligned boolean mask (True = attend).
    """
    v_dim = v.shape[-1]
    if q.is_cuda and v_dim != q.shape[-1]:
        # Flash attention wants equal head dims: pad V with zeros, slice the output back.
        v = F.pad(v, (0, q.shape[-1] - v_dim))
    is_causal = attn_mask is None and q.shape[-2] > 1
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout,
                                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return out[..., :v_dim]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, attn_mask: Optional[torch.Tensor],
            dropout: float, softcap: float = 0.0, enable_gqa: bool = False) -> torch.Tensor:
    """_sdpa, or with softcap > 0 attention written out: logits -> softcap * tanh(logits / softcap) (Gemma 2), in
    fp32, before the mask and the softmax (no fused kernel takes the cap)."""
    if not softcap:
        return _sdpa(q, k, v, scale, attn_mask, dropout, enable_gqa)
    H, T, S = q.shape[1], q.shape[-2], k.shape[-2]
    if k.shape[1] != H:  # shared kv heads (GQA, absorbed MLA): repeat each for its query heads
        k, v = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // v.shape[1], 1)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, T, S)
    logits = softcap * torch.tanh(logits / softcap)
    if attn_mask is None:
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    probs = F.dropout(logits.masked_fill(~attn_mask, torch.finfo(logits.dtype).min).softmax(-1), dropout)
    return torch.matmul(probs.to(v.dtype), v)  # (B, H, T, Ev)


def window_mask(T: int, S: int, window: int, device: torch.device,
                attn_mask: Optional[torch.Tensor] = None, query_slots: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(T, S) bool, or attn_mask's shape: the T new tokens are at query_slots (default: the last T) of the S keys'
    slots; query i at slot q_i sees key j iff 0 <= q_i - j < window, and attn_mask (the caller's, over all slots so
    far) allows it: its last S columns are these keys (a window layer's cache keeps the most recent slots)."""
    if query_slots is None:
        query_slots = torch.arange(S - T, S, device=device)
    d = query_slots[:, None] - torch.arange(S, device=device)  # (T, S) query - key
    mask = (d >= 0) & (d < window)
    return mask if attn_mask is None else mask & attn_mask[..., -S:]


class QKNorm(nn.Module):
    """RMSNorm of each head's queries and keys, per part: for MLA the nope part and the (shared) rope part each
    get their own norm, before RoPE on the rope part (a rotation keeps the norm, so either order works for it)."""

    def __init__(self, dims: tuple[int, ...], eps: float) -> None:
        super().__init__()
        self.q = nn.ModuleList(RMSNorm(d, eps) for d in dims)
        self.k = nn.ModuleList(RMSNorm(d, eps) for d in dims)


class MultiHeadLatentAttention(nn.Module):
    """Keys/values are rebuilt from a C-dim latent; one R-dim RoPE key is shared by all heads."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.n_heads
        self.q_lora_rank = cfg.q_lora_rank
        self.kv_lora_rank = cfg.kv_lora_rank
        self.qk_nope_head_dim = cfg.qk_nope_head_dim
        self.qk_rope_head_dim = cfg.qk_rope_head_dim
        self.v_head_dim = cfg.v_head_dim
        self.qk_head_dim = cfg.qk_head_dim
        self.dropout = cfg.dropout
        d, h = cfg.d_model, cfg.n_heads
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * cfg.v_head_dim, d, bias=False)
        self.o_proj.weight.is_residual_proj = True
        # a norm of each head's expanded key cannot be absorbed into the query: qk_norm decodes the expanded way
        self.absorb = cfg.mla_absorb and not cfg.qk_norm
        self.qk_norm = QKNorm((cfg.qk_nope_head_dim, cfg.qk_rope_head_dim), cfg.norm_eps) if cfg.qk_norm else None
        self.window, self.softcap = cfg.window_of(layer_idx), cfg.attn_softcap

    def _absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                  attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention in the latent space (DeepSeek-V2's weight absorption): K and V are never expanded.

        q_nope . (W_UK c) = (W_UK^T q_nope) . c, and sum_s a_s W_UV c_s = W_UV (sum_s a_s c_s), so each step
        costs H*S*C instead of re-expanding all S cached latents through kv_b_proj.
        """
        H, N, C = self.n_heads, self.qk_nope_head_dim, self.kv_lora_rank
        w = self.kv_b_proj.weight.view(H, N + self.v_head_dim, C)
        w_uk, w_uv = w[:, :N], w[:, N:]  # (H, N, C), (H, V, C)
        q_lat = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)  # (B, H, T, C)
        q = torch.cat((q_lat, q_rope), dim=-1)  # (B, H, T, C+R)
        k = torch.cat((latent.unsqueeze(1), k_rope), dim=-1)  # (B, 1, S, C+R): one "kv head"
        out_lat = _attend(q, k, latent.unsqueeze(1), self.qk_head_dim ** -0.5, attn_mask, 0.0, self.softcap, True)
        return torch.einsum("bhtc,hvc->bhtv", out_lat, w_uv)  # (B, H, T, V)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Optional[KVCache] = None, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, N, R, V = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        if self.q_lora_rank is None:
            q = self.q_proj(x)  # (B, T, H*(N+R))
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, H, N + R).transpose(1, 2)  # (B, H, T, N+R)
        q_nope, q_rope = q.split([N, R], dim=-1)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, R], dim=-1)  # (B,T,C), (B,T,R)
        latent = self.kv_a_layernorm(latent)
        k_rope = k_rope.unsqueeze(1)  # (B, 1, T, R): one rope key shared by all heads
        if self.qk_norm is not None:
            q_nope, q_rope = self.qk_norm.q[0](q_nope), self.qk_norm.q[1](q_rope)
            k_rope = self.qk_norm.k[1](k_rope)
        q_rope = apply_rope(q_rope, cos, sin)
        k_rope = apply_rope(k_rope, cos, sin)
        dropout = self.dropout if self.training else 0.0
        if cache is not None:
            keep = self.window - 1 if self.window else None
            latent, k_rope = cache.update(self.layer_idx, latent, k_rope, keep=keep)  # (B, S, C), (B, 1, S, R)
        if self.window:
            slots = None if cache is None else cache.query_slots(self.layer_idx, T, latent.shape[1])
            attn_mask = window_mask(T, latent.shape[1], self.window, x.device, attn_mask, slots)
        if cache is not None:
            if self.absorb:
                out = self._absorbed(q_nope, q_rope, latent, k_rope, attn_mask)  # (B, H, T, V)
                return self.o_proj(out.transpose(1, 2).reshape(B, T, H * V))
        S = latent.shape[1]
        kv = self.kv_b_proj(latent).view(B, S, H, N + V).transpose(1, 2)  # (B, H, S, N+V)
        k_nope, v = kv.split([N, V], dim=-1)
        if self.qk_norm is not None:
            k_nope = self.qk_norm.k[0](k_nope)
        k = torch.cat((k_nope, k_rope.expand(B, H, S, R)), dim=-1)  # (B, H, S, N+R)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, N+R)
        out = _attend(q, k, v, self.qk_head_dim ** -0.5, attn_mask, dropout, self.softcap)  # (B, H, T, V)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * V))


class GroupedQueryAttention(nn.Module):
    """Standard RoPE attention with G = n_kv_heads shared key/value heads (for ablations)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        d = cfg.d_model
        self.q_proj = nn.Linear(d, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, d, bias=False)
        self.o_proj.weight.is_residual_proj = True
        self.qk_norm = QKNorm((cfg.head_dim,), cfg.norm_eps) if cfg.qk_norm else None
        self.window, self.softcap = cfg.window_of(layer_idx), cfg.attn_softcap

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Optional[KVCache] = None, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, G, E = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, E).transpose(1, 2)  # (B, H, T, E)
        k = self.k_proj(x).view(B, T, G, E).transpose(1, 2)  # (B, G, T, E)
        if self.qk_norm is not None:
            q, k = self.qk_norm.q[0](q), self.qk_norm.k[0](k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = self.v_proj(x).view(B, T, G, E).transpose(1, 2)  # (B, G, T, E)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, keep=self.window - 1 if self.window else None)  # (B, G, S, E)
        if self.window:
            slots = None if cache is None else cache.query_slots(self.layer_idx, T, k.shape[-2])
            attn_mask = window_mask(T, k.shape[-2], self.window, x.device, attn_mask, slots)
        dropout = self.dropout if self.training else 0.0
        out = _attend(q, k, v, E ** -0.5, attn_mask, dropout, self.softcap, G != H)  # (B, H, T, E)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * E))


def build_attention(cfg: ModelConfig, layer_idx: int) -> nn.Module:
    if cfg.attention == "mla":
        return MultiHeadLatentAttention(cfg, layer_idx)
    return GroupedQueryAttention(cfg, layer_idx)
