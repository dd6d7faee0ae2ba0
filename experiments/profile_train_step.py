"""Where a moe_100m train step's time goes: forward and backward time per component, from the PyTorch profiler.

    python experiments/profile_train_step.py [--batch 8] [--seq 256] [--steps 3] [--model moe_100m] [--json PATH]

The model's modules are labelled from outside (forward hooks open a profiler range per component, the model
code is untouched): attention, norms, router, router statistics and balance losses, MoE dispatch (sort, gather,
scatter-add), routed-expert matmuls, shared experts, embedding, LM head + cross-entropy; the step labels grad clip,
optimizer and the router-bias update. Backward ops are charged to the component whose forward op created them
(the autograd sequence number links the two). Each op's self time is counted once, under its innermost label.
"""

from __future__ import annotations

import argparse
import collections
import functools

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import moe_lm.model.transformer as transformer_module
from bench_train_step import make_step
from benchlib import device_name, write_json
from moe_lm.model.attention import GroupedQueryAttention, MultiHeadLatentAttention
from moe_lm.model.layers import FeedForward, RMSNorm
from moe_lm.model.experts import RoutedExperts
from moe_lm.model.moe import MoE
from moe_lm.model.router import TopkRouter

BACKWARD = "autograd::engine::evaluate_function: "


def label_modules(model: torch.nn.Module) -> set[str]:
    """Open a profiler range around each component's forward; return the labels used."""
    def label_of(name: str, module: torch.nn.Module) -> str | None:
        if isinstance(module, (MultiHeadLatentAttention, GroupedQueryAttention)):
            return "attention"
        if isinstance(module, RMSNorm):
            return "norms"
        if isinstance(module, TopkRouter):
            return "router (scores, top-k)"
        if isinstance(module, RoutedExperts):
            return "MoE dispatch (sort, gather, combine)"
        if isinstance(module, MoE):
            return "router statistics + balance losses"
        if isinstance(module, FeedForward):
            return "shared experts" if name.endswith("shared_experts") else "dense MLP"
        if isinstance(module, torch.nn.Embedding):
            return "embedding"
        return None

    labels = set()
    for name, module in model.named_modules():
        label = label_of(name, module)
        if label is None:
            continue
        labels.add(label)
        module.register_forward_pre_hook(functools.partial(_enter, label))
        module.register_forward_hook(_exit)
        if isinstance(module, RoutedExperts):  # the expert matmuls inside the dispatch
            for method in ("_grouped", "_loop"):
                setattr(module, method, _ranged("routed experts (matmuls)", getattr(module, method)))
            labels.add("routed experts (matmuls)")
    transformer_module.linear_cross_entropy = _ranged("LM head + cross-entropy", transformer_module.linear_cross_entropy)
    return labels | {"LM head + cross-entropy", "grad clip", "optimizer (fused AdamW)", "router bias update"}


_open: list = []


def _enter(label, module, args):
    _open.append(record_function(label))
    _open[-1].__enter__()


def _exit(module, args, output):
    _open.pop().__exit__(None, None, None)


def _ranged(label, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def attribute(events, labels: set[str]) -> dict[str, dict[str, float]]:
    """Self CPU time (us) per (component, forward|backward)."""
    def innermost(event):
        """(label, phase) of the nearest labelled ancestor, or of the forward op a backward function belongs to."""
        e = event
        while e is not None:
            if e.name in labels:
                return e.name, "forward"
            if e.name.startswith(BACKWARD):
                return seq_label.get(e.sequence_nr, "other"), "backward"
            e = e.cpu_parent
        return "other", "forward"

    seq_label = {}
    for e in events:  # forward ops that autograd records carry the sequence number their backward will have
        if e.sequence_nr >= 0 and not e.name.startswith(BACKWARD) and e.sequence_nr not in seq_label:
            label, phase = innermost(e)
            if phase == "forward":
                seq_label[e.sequence_nr] = label
    out: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for e in events:
        if e.name in labels:
            continue  # the ranges themselves: their self time is the hooks' overhead, counted as other
        label, phase = innermost(e)
        out[label][phase] += e.self_cpu_time_total
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="moe_100m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    ap.add_argument("--ce-chunk-size", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    args.precision = "bf16"
    device = torch.device("cpu")  # self CPU time attributes a CPU step; on CUDA read the kernel table instead
    step, info, model = make_step(args.model, args, device)
    labels = label_modules(model)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    table = attribute(prof.events(), labels)
    total = sum(v["forward"] + v["backward"] for v in table.values())
    rows = sorted(table.items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"]))
    print(f"device: {device_name(device)}; {args.model}, batch {args.batch} x {args.seq}, bf16, "
          f"{args.steps} profiled steps, ms per step\n")
    print("| component | forward | backward | total | share |\n|---|---:|---:|---:|---:|")
    for name, v in rows:
        f, b = v["forward"] / 1e3 / args.steps, v["backward"] / 1e3 / args.steps
        print(f"| {name} | {f:.1f} | {b:.1f} | {f + b:.1f} | {100 * (f + b) * 1e3 * args.steps / total:.1f}% |")
    print(f"| **step** | | | {total / 1e3 / args.steps:.1f} | 100% |")
    write_json(args.json, {"device": device_name(device), "model": args.model, "batch": args.batch, "seq": args.seq,
                           "ms_per_step": {k: {p: t / 1e3 / args.steps for p, t in v.items()} for k, v in table.items()}})


if __name__ == "__main__":
    main()
