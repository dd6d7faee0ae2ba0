"""Train-step time of each architecture switch (conf/arch) against the baseline, at the architecture ablation's
scale (moe_small, 16 x 256 tokens, bf16), timed in interleaved rounds (baseline, gelu, geglu, ..., baseline, ...).

    python experiments/bench_arch_switches.py [--reps 5] [--arms baseline,qk_norm,...] [--json PATH]

Full optimizer steps (forward with the training losses, backward, AdamW, router-bias step) on random tokens; the
step-time column of the architecture ablation (docs/experiments.md) comes from here, not from the sweep's wall clock.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from benchlib import arguments, device_name, interleaved, summarise, table, write_json
from moe_lm.cli import compose
from moe_lm.model import MoETransformer

ARMS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "arch").glob("*.yaml"))


def make_step(arm: str, batch: int, device: torch.device):
    cfg = compose(["+experiment=architecture_ablation", f"+arch={arm}"])
    m, seq = cfg.model, cfg.data.seq_len
    torch.manual_seed(0)
    model = MoETransformer(m).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, m.vocab_size, (batch, seq + 1), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x[:, :-1], targets=x[:, 1:])
            n = x[:, 1:].numel()
            loss = out.ce_sum / n + m.aux_loss_coef * out.aux_loss + m.z_loss_coef * out.z_loss
            if out.lm_z_sum is not None:
                loss = loss + m.output_z_loss_coef * out.lm_z_sum / n
            if out.mtp_loss is not None:
                loss = loss + m.mtp_loss_weight * out.mtp_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_router_biases()

    return step, dataclasses.asdict(m)


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--arms", default=",".join(ARMS), help="conf/arch names; baseline is always included")
    args = ap.parse_args()
    device = torch.device(args.device)
    arms = ["baseline"] + [a for a in args.arms.split(",") if a and a != "baseline"]
    cases = {arm: make_step(arm, args.batch, device)[0] for arm in arms}
    print(f"device: {device_name(device)}; moe_small, batch {args.batch} x 256, bf16, {args.reps} interleaved rounds "
          f"after {args.warmup} warm-up\n")
    summary = summarise(interleaved(cases, args.reps, args.warmup, device), "baseline")
    print(table(summary, "baseline"))
    write_json(args.json, {"device": device_name(device), "batch": args.batch, "summary": summary})


if __name__ == "__main__":
    main()
