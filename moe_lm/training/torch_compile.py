"""`trainer.compile=true`: torch.compile the model with the configured mode, backend and fullgraph, and report the
graphs and graph breaks dynamo saw during the run (read from its counters, which this run clears at its start).

A clean run of the compile-clean dispatch paths (model.moe_impl grouped_mm, bmm, capacity) shows one graph per
model mode and input shape (training, validation, a last shorter batch) and no graph break; the loop path breaks
in every MoE layer (it reads each expert's group size on the host).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moe_lm.config import TrainerConfig

# compile modes that replay the step as a CUDA graph: every shape fixed, nothing read on the host
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_model(model: nn.Module, cfg: TrainerConfig) -> None:
    """Compile model.forward in place and start counting graphs and breaks from zero."""
    from torch._dynamo.utils import counters

    counters.clear()
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    model.compile(mode=mode, fullgraph=cfg.compile_fullgraph, backend=cfg.compile_backend)


def compile_report() -> dict[str, Any]:
    """{"graphs": compiled graphs, "graph_breaks": breaks, "break_reasons": [first line of each distinct reason]}."""
    from torch._dynamo.utils import counters

    reasons: dict[str, int] = {}
    for key in ("graph_break", "unimplemented"):  # the key dynamo files a break under differs between versions
        for reason, n in counters.get(key, {}).items():
            line = str(reason).strip().splitlines()[0] if str(reason).strip() else "unknown"
            reasons[line] = reasons.get(line, 0) + n
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)), "graph_breaks": sum(reasons.values()),
            "break_reasons": sorted(reasons, key=reasons.get, reverse=True)}


def report_line(report: dict[str, Any]) -> str:
    g, b = report["graphs"], report["graph_breaks"]
    line = f"compile: {g} graph{'s' * (g != 1)}, {b} graph break{'s' * (b != 1)}"
    if report["break_reasons"]:
        line += " (" + "; ".join(report["break_reasons"][:3]) + ")"
    return line
