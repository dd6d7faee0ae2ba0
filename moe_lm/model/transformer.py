"""Decoder-only MoE transformer: embed -> blocks -> final RMSNorm -> (tied) LM head, and in training optionally
one multi-token-prediction module (model.mtp_depth=1, DeepSeek-V3 sec. 2.2) that predicts the token after next.

Shape legend: B batch, T time, D model width, V vocab, L MoE layers, E routed experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from moe_lm.config import ModelConfig
from moe_lm.model.block import Block
from moe_lm.model.cache import KVCache
from moe_lm.model.layers import RMSNorm, rope_cos_sin
from moe_lm.model.loss import IGNORE_INDEX, linear_cross_entropy, softcap
from moe_lm.model.moe import MoE


@dataclass
class ModelOutput:
    logits: Optional[torch.Tensor]  # (B, T, V); None when the loss was fused with the head (targets=...)
    aux_loss: torch.Tensor  # scalar, mean over MoE layers (1.0 when balanced)
    z_loss: torch.Tensor  # scalar, mean over MoE layers
    expert_counts: Optional[torch.Tensor]  # (L, E) token slots per expert per MoE layer
    topk_idx: Optional[torch.Tensor]  # (L, B*T, K) chosen experts per MoE layer
    topk_weight: Optional[torch.Tensor] = None  # (L, B*T, K) their weights
    hidden_states: Optional[list[torch.Tensor]] = None  # n_layers x (B, T, D), with return_hidden=True
    router_entropy: Optional[torch.Tensor] = None  # scalar, mean over MoE layers
    router_logits: Optional[torch.Tensor] = None  # (L, B*T, E) fp32 router logits per MoE layer
    ce_sum: Optional[torch.Tensor] = None  # scalar fp32: summed next-token cross-entropy, with targets=...
    lm_z_sum: Optional[torch.Tensor] = None  # scalar fp32: summed logsumexp(LM logits)^2, with output_z_loss_coef
    mtp_loss: Optional[torch.Tensor] = None  # scalar fp32: the MTP module's mean cross-entropy (training, targets)
    dropped_slots: Optional[torch.Tensor] = None  # scalar int64: slots over capacity, all MoE layers (moe_impl=capacity)


class MultiTokenPrediction(nn.Module):
    """Depth-1 MTP (DeepSeek-V3): h'_t = W [RMSNorm(Emb(x_{t+1})); RMSNorm(h_t)], one dense block, then the main
    model's final norm and LM head predict x_{t+2}. Embedding and head are the main model's (shared)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.enorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        self.block = Block(cfg, cfg.n_layers, dense=True)

    def forward(self, h: torch.Tensor, next_emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """h: (B, T', D) main hidden states; next_emb: (B, T', D) embeddings of the next tokens -> (B, T', D)."""
        x = self.eh_proj(torch.cat((self.enorm(next_emb), self.hnorm(h)), dim=-1))
        return self.block(x, cos, sin)[0]


class MoETransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.mtp = MultiTokenPrediction(cfg) if cfg.mtp_depth else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.rope_dim = cfg.qk_rope_head_dim if cfg.attention == "mla" else cfg.head_dim
        self.gradient_checkpointing = False  # a training-memory switch (trainer.gradient_checkpointing), not architecture
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated-normal init (std from config); residual output projections scaled by 1/sqrt(2L)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm weights stay 1
            scale = 1.0 / math.sqrt(2 * self.cfg.n_layers) if getattr(p, "is_residual_proj", False) else 1.0
            nn.init.trunc_normal_(p, mean=0.0, std=std * scale, a=-3 * std * scale, b=3 * std * scale)

    def moe_layers(self) -> list[MoE]:
        return [layer.mlp for layer in self.layers if layer.is_moe]

    def forward(self, input_ids: torch.Tensor, cache: Optional[KVCache] = None,
                positions: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
                logits_at: Optional[torch.Tensor] = None, return_hidden: bool = False,
                token_mask: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None,
                ce_chunk_size: int = 0, routing_stats: bool = True,
                forced_expert: Optional[torch.Tensor] = None) -> ModelOutput:
        """input_ids: (B, T). With a cache, positions default to continuing after the cached tokens.

        logits_at: optional (B, T) bool mask; logits are then computed only there, shape (M, V) (evaluation skips
        the LM head on unscored positions; training keeps fixed shapes and passes ignored targets instead).
        targets: optional, one target id per row the head would see ((B, T), or (M,) with logits_at): the head is
        then fused with the loss, output.ce_sum is the summed cross-entropy and output.logits None; ce_chunk_size
        > 0 computes it that many rows at a time without ever holding all the logits (moe_lm/model/loss.py).
        routing_stats=False (not in training): no routing tensors are gathered (decoding reads none).
        token_mask: optional (B, T) bool, the tokens that count in routing statistics and balance losses
        (training passes the loss mask, so padding skews neither the balance nor the router bias update).
        forced_expert: optional (B, T) routed expert that must hold one of each token's top-k slots in every MoE
        layer (-1: none; the forced warm start).
        """
        B, T = input_ids.shape
        if cache is not None and self.cfg.router_type == "expert_choice":
            raise ValueError("model.router_type=expert_choice cannot decode: which tokens an expert takes depends on "
                             "the whole batch, later tokens included (not causal); it is a training-time baseline")
        if positions is None:
            start = cache.seq_len if cache is not None else 0
            positions = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        if attn_mask is None and cache is not None:
            attn_mask = cache.causal_mask(T, input_ids.device)  # (T, S) or None (plain causal)
        cos, sin = rope_cos_sin(positions, self.rope_dim, self.cfg.rope_theta)  # (T, R/2) or (B, T, R/2)
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, R/2)
        x = self.dropout(self.embed_tokens(input_ids))  # (B, T, D)
        stats, hidden = [], []
        recompute = self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:  # keep only each block's input; its activations are recomputed in the backward pass
                x, s = checkpoint(layer, x, cos, sin, None, attn_mask, token_mask, input_ids, forced_expert,
                                  use_reentrant=False)
            else:
                x, s = layer(x, cos, sin, cache, attn_mask, token_mask, input_ids, forced_expert)
            if s is not None:
                stats.append(s)
            if return_hidden:
                hidden.append(x)
        mtp_loss = None
        if self.mtp is not None and self.training and targets is not None and logits_at is None:
            mtp_loss = self._mtp_loss(x, targets, cos, sin, ce_chunk_size)
        if logits_at is not None:
            x = x[logits_at]  # (M, D)
        cap, lm_z_sum = self.cfg.logit_softcap, None
        if targets is None:
            logits, ce_sum = self.lm_head(self.norm(x)), None  # (B, T, V) or (M, V)
            if cap:
                logits = softcap(logits.float(), cap).to(logits.dtype)
        else:
            h = self.norm(x).flatten(0, -2)  # (M, D)
            logits = None
            ce_sum, lm_z_sum = linear_cross_entropy(h, self.lm_head.weight, targets.flatten(), ce_chunk_size, cap,
                                                    z_loss=self.cfg.output_z_loss_coef > 0)
        extra = dict(ce_sum=ce_sum, lm_z_sum=lm_z_sum, mtp_loss=mtp_loss)
        zero = x.new_zeros((), dtype=torch.float32)
        hidden_states = hidden if return_hidden else None
        if self.training:
            for moe, s in zip(self.moe_layers(), stats):
                moe.record_load(s.expert_counts)
        if not stats or not (routing_stats or self.training):
            return ModelOutput(logits, zero, zero, None, None, None, hidden_states, **extra)
        aux = torch.stack([s.aux_loss for s in stats]).mean()
        z = torch.stack([s.z_loss for s in stats]).mean()
        counts = torch.stack([s.expert_counts for s in stats])  # (L, E)
        topk = torch.stack([s.topk_idx for s in stats])  # (L, N, K)
        weights = torch.stack([s.topk_weight for s in stats])  # (L, N, K)
        entropy = torch.stack([s.router_entropy for s in stats]).mean()
        router_logits = torch.stack([s.router_logits for s in stats])  # (L, N, E)
        if stats[0].dropped is not None:
            extra["dropped_slots"] = torch.stack([s.dropped for s in stats]).sum()
        return ModelOutput(logits, aux, z, counts, topk, weights, hidden_states, entropy, router_logits, **extra)

    def _mtp_loss(self, x: torch.Tensor, targets: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  ce_chunk_size: int) -> torch.Tensor:
        """Mean cross-entropy of predicting targets[:, t+1] (the token after next) from x[:, t] and the embedding
        of targets[:, t] (the next token), for t < T-1; positions whose either target is padding do not count."""
        nxt, after = targets[:, :-1], targets[:, 1:]  # (B, T-1) each
        valid = (nxt != IGNORE_INDEX) & (after != IGNORE_INDEX)
        emb = self.embed_tokens(nxt.clamp_min(0))  # (B, T-1, D)
        cos, sin = cos[..., :-1, :], sin[..., :-1, :]  # the positions of x[:, :-1]
        h = self.mtp(x[:, :-1], emb, cos, sin)  # (B, T-1, D)
        t2 = after.masked_fill(~valid, IGNORE_INDEX).flatten()
        ce, _ = linear_cross_entropy(self.norm(h).flatten(0, -2), self.lm_head.weight, t2, ce_chunk_size,
                                     self.cfg.logit_softcap)
        return ce / valid.sum().clamp_min(1)

    @torch.no_grad()
    def update_router_biases(self) -> None:
        """Call once per optimizer step (after gradient accumulation)."""
        if self.cfg.use_aux_free_bias:
            for moe in self.moe_layers():
                moe.update_bias(self.cfg.bias_update_rate)
        else:
            for moe in self.moe_layers():
                moe.tokens_per_expert.zero_()
