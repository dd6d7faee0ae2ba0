"""On a CUDA GPU: which SDPA kernels take moe_100m's attention, and whether they agree.

    python experiments/cuda_attention_check.py

Runs moe_100m's training forward + backward in bf16 with each SDPA backend forced in turn (flash, memory-efficient,
math), reports whether it ran and its logits' and first-layer gradients' largest difference from the math backend,
then the KV-cached decode (MLA latent cache, weight absorption) against the full forward on the same device.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from moe_lm.cli import compose
from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH}


def forward_backward(model: MoETransformer, x: torch.Tensor, backend: SDPBackend):
    model.zero_grad(set_to_none=True)
    with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x).logits.float()
    logits.logsumexp(-1).mean().backward()
    grad = model.layers[0].self_attn.kv_a_proj_with_mqa.weight.grad.float()
    return logits.detach(), grad.clone()


def main() -> None:
    cfg = compose(["model=moe_100m"]).model
    torch.manual_seed(0)
    model = MoETransformer(cfg).cuda()
    x = torch.randint(0, cfg.vocab_size, (4, 512), device="cuda")
    ref_logits, ref_grad = forward_backward(model, x, SDPBackend.MATH)
    for name, backend in BACKENDS.items():
        try:
            logits, grad = forward_backward(model, x, backend)
        except RuntimeError as err:
            print(f"{name}: did not run ({str(err).splitlines()[0][:120]})")
            continue
        print(f"{name}: ran; max |logits - math| {(logits - ref_logits).abs().max():.3e}, "
              f"max |grad - math| / max |grad| {(grad - ref_grad).abs().max() / ref_grad.abs().max():.3e}")

    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = model(x[:1, :64]).logits.float()
        cache = KVCache(cfg.n_layers, 64)
        first = model(x[:1, :32], cache=cache, routing_stats=False).logits.float()
        steps = [model(x[:1, t:t + 1], cache=cache, routing_stats=False).logits.float() for t in range(32, 64)]
    cached = torch.cat([first] + steps, dim=1)
    agree = (cached.argmax(-1) == full.argmax(-1)).float().mean()
    print(f"cached decode vs full forward (bf16): max |diff| {(cached - full).abs().max():.3e}, argmax agrees at "
          f"{100 * agree:.1f}% of 64 positions")


if __name__ == "__main__":
    main()
