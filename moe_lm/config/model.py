"""`model.*`: the architecture (moe_lm/model/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moe_lm.config.base import _check, _one_of

ACTIVATIONS = ("swiglu", "geglu", "gelu", "learned_gelu")
# the model.* keys of the architecture ablation (conf/arch, conf/experiment/architecture_ablation.yaml)
ARCHITECTURE_SWITCHES = ("activation", "qk_norm", "attn_softcap", "logit_softcap", "output_z_loss_coef",
                         "sliding_window", "window_pattern", "router_type", "aux_loss_scope", "mtp_depth",
                         "mtp_loss_weight")


@dataclass
class ModelConfig:
    name: str = "moe_100m"
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    max_seq_len: int = 1024
    # attention: "mla" (DeepSeek-V2/V3 multi-head latent attention) or "gqa" (RoPE + n_kv_heads)
    attention: str = "mla"
    q_lora_rank: Optional[int] = None  # null = full query projection
    kv_lora_rank: int = 256
    qk_nope_head_dim: int = 64
    qk_rope_head_dim: int = 32
    v_head_dim: int = 64
    mla_absorb: bool = True  # cached decoding attends in the latent space (weight absorption)
    n_kv_heads: int = 2  # gqa only
    head_dim: int = 64  # gqa only
    rope_theta: float = 10000.0
    # feed-forward
    n_shared_experts: int = 2
    n_routed_experts: int = 5
    moe_intermediate_size: int = 576
    top_k: int = 2
    scoring: str = "sigmoid"  # sigmoid (DeepSeek-V3; exports exactly) | softmax (DeepSeek-V2)
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    first_k_dense: int = 0  # the first k layers use a dense MLP
    dense_intermediate_size: int = 2048
    # FFN: swiglu | geglu (gated) | gelu | learned_gelu (one up projection; learned_gelu learns a per-channel
    # scale and shift before the GELU). "silu" is read as swiglu (older configs).
    activation: str = "swiglu"
    # how the routed experts run (same outputs): auto | loop | grouped_mm | bmm | capacity (moe_lm/model/experts.py)
    moe_impl: str = "auto"
    # moe_impl=capacity: each expert takes at most C = ceil(capacity_factor * N * top_k / n_routed_experts) of a
    # training batch's N tokens (first choices before second ones); null: C = N, which drops nothing
    capacity_factor: Optional[float] = None
    # load balancing, each switchable
    use_aux_loss: bool = True  # switch/GShard loss over all tokens of the batch
    aux_loss_coef: float = 0.01
    use_aux_free_bias: bool = True  # DeepSeek-V3 selection bias
    bias_update_rate: float = 0.001
    use_z_loss: bool = True
    z_loss_coef: float = 0.001
    # architecture switches (moe_lm/model; docs/model.md); the defaults are the original model
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (MLA: on the nope and rope parts apart)
    attn_softcap: float = 0.0  # > 0: attention logits -> cap * tanh(logits / cap)
    logit_softcap: float = 0.0  # > 0: the LM head's logits -> cap * tanh(logits / cap)
    output_z_loss_coef: float = 0.0  # > 0: adds coef * mean(logsumexp(LM logits)^2) to the training loss
    sliding_window: int = 0  # > 0: the local layers attend to the last sliding_window positions (cache keeps those)
    window_pattern: str = "L"  # per layer, cycled: L = local (sliding_window), G = global
    router_type: str = "token_choice"  # token_choice | expert_choice (training only, not causal) | hash (token id)
    aux_loss_scope: str = "batch"  # batch (switch/GShard) | sequence (DeepSeek-V3's complementary loss)
    mtp_depth: int = 0  # 1: one DeepSeek-V3 multi-token-prediction module (predicts t+2), dropped at inference
    mtp_loss_weight: float = 0.3
    # misc
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        k = "model."
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "n_routed_experts",
                     "moe_intermediate_size", "top_k"):
            _check(getattr(self, name) > 0, k + name, "must be > 0")
        _check(self.rope_theta > 0, k + "rope_theta", f"must be > 0 (the RoPE base), got {self.rope_theta}")
        _one_of(self.attention, k + "attention", ("mla", "gqa"))
        _one_of(self.scoring, k + "scoring", ("softmax", "sigmoid"))
        if self.activation == "silu":
            self.activation = "swiglu"
        _one_of(self.activation, k + "activation", ACTIVATIONS)
        _one_of(self.router_type, k + "router_type", ("token_choice", "expert_choice", "hash"))
        _one_of(self.aux_loss_scope, k + "aux_loss_scope", ("batch", "sequence"))
        for name in ("attn_softcap", "logit_softcap", "output_z_loss_coef", "mtp_loss_weight", "sliding_window"):
            _check(getattr(self, name) >= 0, k + name, "must be >= 0")
        _check(self.mtp_depth in (0, 1), k + "mtp_depth", f"must be 0 or 1 (one MTP module), got {self.mtp_depth}")
        _check(bool(self.window_pattern) and set(self.window_pattern) <= {"L", "G"}, k + "window_pattern",
               f"must be a non-empty string of L (local) and G (global), got {self.window_pattern!r}")
        _check(not self.sliding_window or "L" in self.window_pattern, k + "window_pattern",
               f"sliding_window={self.sliding_window} but no layer is local (L) in {self.window_pattern!r}")
        _check(self.router_type != "hash" or self.vocab_size >= self.n_routed_experts, k + "router_type",
               "hash routing needs vocab_size >= n_routed_experts")
        _one_of(self.moe_impl, k + "moe_impl", ("auto", "loop", "grouped_mm", "bmm", "capacity"))
        _check(self.capacity_factor is None or self.capacity_factor > 0, k + "capacity_factor",
               f"must be null (drop nothing) or > 0, got {self.capacity_factor}")
        _check(self.capacity_factor is None or self.moe_impl == "capacity", k + "capacity_factor",
               f"is read by model.moe_impl=capacity only (moe_impl={self.moe_impl} drops nothing)")
        _check(self.top_k <= self.n_routed_experts, k + "top_k",
               f"top_k={self.top_k} exceeds model.n_routed_experts={self.n_routed_experts}")
        _check(self.n_shared_experts >= 0, k + "n_shared_experts", "must be >= 0")
        _check(0 <= self.first_k_dense <= self.n_layers, k + "first_k_dense", "must be in [0, n_layers]")
        _check(0.0 <= self.dropout < 1.0, k + "dropout", "must be in [0, 1)")
        _check(self.init_std > 0, k + "init_std", "must be > 0")
        if self.attention == "mla":
            _check(self.qk_rope_head_dim % 2 == 0 and self.qk_rope_head_dim > 0, k + "qk_rope_head_dim",
                   f"RoPE needs an even positive dim, got {self.qk_rope_head_dim}")
            _check(self.kv_lora_rank > 0, k + "kv_lora_rank", "must be > 0")
            _check(self.q_lora_rank is None or self.q_lora_rank > 0, k + "q_lora_rank", "must be null or > 0")
            _check(self.qk_nope_head_dim > 0 and self.v_head_dim > 0, k + "qk_nope_head_dim",
                   "qk_nope_head_dim and v_head_dim must be > 0")
        else:
            _check(self.head_dim % 2 == 0, k + "head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
            _check(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, k + "n_kv_heads",
                   f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense

    def switches(self) -> str:
        """The architecture switches set away from their defaults, "key=value; ..." ("baseline" when none)."""
        default = ModelConfig()
        changed = [f"{k}={getattr(self, k)}" for k in ARCHITECTURE_SWITCHES if getattr(self, k) != getattr(default, k)]
        return "; ".join(changed) or "baseline"

    def window_of(self, layer_idx: int) -> int:
        """The sliding window of layer `layer_idx` (0: global attention)."""
        local = self.window_pattern[layer_idx % len(self.window_pattern)] == "L"
        return self.sliding_window if local else 0
