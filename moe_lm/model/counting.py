"""Parameter and FLOP accounting, MoE- and MLA-aware."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from moe_lm.config import ModelConfig


# Dense bf16 tensor-core peak FLOP/s per device (the name is matched as a substring of the CUDA device name),
# and memory in GiB: shared by the MFU meter (training/callbacks.py) and the compute planner (eval/compute_plan.py).
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
    "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}
DEVICE_MEMORY_GIB = {"H200": 141, "H100": 80, "A100": 40, "L40S": 48, "L4": 24, "A10G": 24, "A10": 24,
                     "RTX 4090": 24, "RTX 3090": 24, "V100": 16, "T4": 16}
# Memory bandwidth in GB/s (SXM parts; the 40 GB A100): with PEAK_FLOPS, what moe_lm/eval/throughput.py scales a
# measured speed by to bound an unmeasured GPU's
MEMORY_BANDWIDTH_GBPS = {"H200": 4800, "H100": 3350, "A100": 1555, "L40S": 864, "L4": 300, "A10G": 600, "A10": 600,
                         "RTX 4090": 1008, "RTX 3090": 936, "V100": 900, "T4": 320}
CPU_PEAK_FLOPS = 1e12  # nominal; set trainer.peak_flops (or plan's flops_per_s) for your machine
UNKNOWN_GPU_PEAK_FLOPS = 312e12

def param_breakdown(model: nn.Module, cfg: ModelConfig) -> "OrderedDict[str, int]":
    """Parameter counts by part. Routed experts are reported one by one, summed over layers."""
    parts: "OrderedDict[str, int]" = OrderedDict(
        (k, 0) for k in ("embeddings", "attention", "dense_mlp", "shared_experts", "router", "norms"))
    experts = [0] * cfg.n_routed_experts
    for name, p in model.named_parameters():  # tied weights are yielded once
        if name.startswith("mtp."):
            parts["mtp"] = parts.get("mtp", 0) + p.numel()  # training only: not in the totals
        elif ".experts." in name:
            for e in range(cfg.n_routed_experts):
                experts[e] += p[e].numel()
        elif name.startswith(("embed_tokens", "lm_head")):
            parts["embeddings"] += p.numel()
        elif ".self_attn." in name and "layernorm" not in name:
            parts["attention"] += p.numel()
        elif ".shared_experts." in name:
            parts["shared_experts"] += p.numel()
        elif ".mlp.gate.weight" in name:
            parts["router"] += p.numel()
        elif "norm" in name:
            parts["norms"] += p.numel()
        elif ".mlp." in name:
            parts["dense_mlp"] += p.numel()
        else:
            raise ValueError(f"unclassified parameter {name}")
    for e, n in enumerate(experts):
        parts[f"routed_expert_{e}"] = n
    dense = sum(v for k, v in parts.items() if not k.startswith("routed_expert") and k != "mtp")
    total = dense + sum(experts)
    parts["dense_total"] = dense
    parts["total"] = total
    parts["active_per_token"] = dense + cfg.top_k * sum(experts) // cfg.n_routed_experts  # K experts per token
    return parts


def matmul_params_per_token(cfg: ModelConfig, parts: dict[str, int]) -> int:
    """Weights multiplied per token: active parameters minus the embedding lookup, plus the LM head."""
    embed = cfg.vocab_size * cfg.d_model
    return parts["active_per_token"] - parts["embeddings"] - parts["norms"] + embed


def train_flops_per_token(cfg: ModelConfig, parts: dict[str, int], seq_len: int) -> float:
    """6 * matmul params (forward + backward) + attention scores and values (PaLM appendix B, no causal halving).

    The attention term per layer is 6 * T * H * (d_qk + d_v): QK^T and AV, forward and backward.
    """
    if cfg.attention == "mla":
        qk, v = cfg.qk_head_dim, cfg.v_head_dim
    else:
        qk, v = cfg.head_dim, cfg.head_dim
    attn = 6 * cfg.n_layers * seq_len * cfg.n_heads * (qk + v)
    return 6.0 * matmul_params_per_token(cfg, parts) + attn


def model_line(cfg: ModelConfig) -> str:
    """One line that says what the model is: `model moe_100m: 12 layers, d_model 512, MLA, 5 routed experts ...`."""
    n_moe = sum(map(cfg.is_moe_layer, range(cfg.n_layers)))
    ffn = (f"{cfg.n_routed_experts} routed experts (top-{cfg.top_k}), {cfg.n_shared_experts} shared" if n_moe
           else f"dense MLP {cfg.dense_intermediate_size} wide (no routed experts)")
    return f"model {cfg.name}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.attention.upper()}, {ffn}"


def param_table(cfg: ModelConfig, seq_len: int) -> str:
    """The parameter breakdown and training FLOPs per token as a text table (model built on the meta device)."""
    import torch

    from moe_lm.model.transformer import MoETransformer

    with torch.device("meta"):  # count without allocating
        model = MoETransformer(cfg)
    parts = param_breakdown(model, cfg)
    flops = train_flops_per_token(cfg, parts, seq_len)
    total = parts["total"]
    lines = [model_line(cfg), "",
             f"{'part':<22}{'params':>14}{'share':>9}", "-" * 45]
    for name, n in parts.items():
        if name in ("dense_total", "total", "active_per_token"):
            lines.append("-" * 45)
        lines.append(f"{name:<22}{n:>14,}{100 * n / total:>8.1f}%")
    lines += ["-" * 45, f"{'train FLOPs/token':<22}{flops:>14,.0f}  (seq_len {seq_len}, fwd+bwd)"]
    return "\n".join(lines)
