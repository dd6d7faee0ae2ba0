"""Parameter table: `python -m moe_lm.params [hydra overrides, e.g. model=moe_tiny model.n_layers=4]`."""

from __future__ import annotations

import sys

import torch

from moe_lm.conf_utils import compose
from moe_lm.model import MoETransformer
from moe_lm.model.counting import param_breakdown, train_flops_per_token


def format_table(overrides: list[str]) -> str:
    cfg = compose(overrides)
    with torch.device("meta"):  # count without allocating
        model = MoETransformer(cfg.model)
    parts = param_breakdown(model, cfg.model)
    flops = train_flops_per_token(cfg.model, parts, cfg.data.seq_len)
    total = parts["total"]
    lines = [f"model {cfg.model.name}: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}, "
             f"{cfg.model.attention.upper()}, {cfg.model.n_routed_experts} routed experts (top-{cfg.model.top_k}), "
             f"{cfg.model.n_shared_experts} shared", "",
             f"{'part':<22}{'params':>14}{'share':>9}", "-" * 45]
    for name, n in parts.items():
        if name in ("dense_total", "total", "active_per_token"):
            lines.append("-" * 45)
        lines.append(f"{name:<22}{n:>14,}{100 * n / total:>8.1f}%")
    lines += ["-" * 45, f"{'train FLOPs/token':<22}{flops:>14,.0f}  (seq_len {cfg.data.seq_len}, fwd+bwd)"]
    return "\n".join(lines)


def main() -> None:
    print(format_table(sys.argv[1:]))


if __name__ == "__main__":
    main()
