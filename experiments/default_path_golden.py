"""The default model's numbers on fixed inputs, to show that a change leaves the default path bit-identical.

    python experiments/default_path_golden.py --write   # (re)records tests/model/data/default_path.safetensors

tests/model/test_default_path.py computes the same tensors with the current code and compares them with the
recording (exactly, on a machine of the recording's fingerprint). It was recorded with the code before the
architecture switches (commit 0f88ef3), run from a worktree of that commit:
    git worktree add /tmp/old 0f88ef3 && cd /tmp/old && \
        PYTHONPATH=/tmp/old python <repo>/experiments/default_path_golden.py --write
(PYTHONPATH: the old package, not the installed one). Uses only the model API that both versions have.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from moe_lm.config import ModelConfig
from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache

OUT = Path(__file__).resolve().parents[1] / "tests/model/data/default_path.safetensors"
TINY = dict(vocab_size=97, d_model=32, n_layers=3, n_heads=2, kv_lora_rank=16, qk_nope_head_dim=8,
            qk_rope_head_dim=4, v_head_dim=8, moe_intermediate_size=16, dense_intermediate_size=48, first_k_dense=1,
            n_routed_experts=4, max_seq_len=64)
VARIANTS = {"mla": {}, "gqa": dict(attention="gqa", n_kv_heads=1, head_dim=8),
            "softmax_loop": dict(scoring="softmax", moe_impl="loop")}


def fingerprint() -> str:
    """What decides the exact bits: the torch build, the ISA, and the thread count (a CPU matmul's reduction order
    changes with it)."""
    return (f"torch {torch.__version__} {platform.machine()} {torch.backends.cpu.get_cpu_capability()} "
            f"threads {torch.get_num_threads()}")


def compute() -> dict[str, torch.Tensor]:
    """Per variant: eval logits, training losses with the chunked head, every gradient, and 4 cached decode steps."""
    out: dict[str, torch.Tensor] = {}
    for name, extra in VARIANTS.items():
        torch.manual_seed(0)
        model = MoETransformer(ModelConfig(**TINY, **extra))
        ids = torch.randint(0, TINY["vocab_size"], (2, 13))
        model.eval()
        with torch.no_grad():
            out[f"{name}.logits"] = model(ids[:, :-1]).logits
            cache = KVCache(TINY["n_layers"])
            steps = [model(ids[:, :8], cache=cache).logits[:, -1]]
            for t in range(8, 12):
                steps.append(model(ids[:, t:t + 1], cache=cache).logits[:, -1])
            out[f"{name}.decode"] = torch.stack(steps)
        model.train()
        res = model(ids[:, :-1], targets=ids[:, 1:], ce_chunk_size=5)
        (res.ce_sum / 24 + 0.01 * res.aux_loss + 0.001 * res.z_loss).backward()
        out[f"{name}.losses"] = torch.stack([res.ce_sum, res.aux_loss, res.z_loss]).detach()
        for pname, p in model.named_parameters():
            out[f"{name}.grad.{pname}"] = p.grad
    return {k: v.detach().contiguous() for k, v in out.items()}


def main() -> None:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    tensors = compute()
    if args.write:
        save_file(tensors, str(args.out), metadata={"fingerprint": fingerprint()})
        print(f"wrote {len(tensors)} tensors to {args.out} ({fingerprint()})")


if __name__ == "__main__":
    main()
