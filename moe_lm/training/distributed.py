"""Several processes on Lightning's own engine: the `strategy` group mapped onto Lightning strategies, and the
few places where moe_lm must see the whole global batch rather than one process's share.

- data: each process takes its rows of the same global batch k (moe_lm/data/shards.py), so the batch and the data
  order do not depend on the number of processes, and the resume state stays the global batch count;
- the balance loss uses the expert loads of the global batch (`mean_over_processes`), so its gradient is the
  one-process gradient; the aux-free bias update all-reduces the loads (lit_module.optimizer_step);
- logged training metrics are averaged over processes; checkpoints and signals involve every process.
"""

from __future__ import annotations

from typing import Any

import torch

from moe_lm.config import ConfigError, TrainConfig


def lightning_strategy(cfg: TrainConfig) -> tuple[Any, Any, int]:
    """(strategy, devices, num_nodes) for L.Trainer."""
    s = cfg.strategy
    if s.name == "single":
        return "auto", 1, 1
    devices = "auto" if s.devices == "auto" else int(s.devices)
    if s.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # broadcast_buffers=False: each process keeps its own expert loads between bias updates (they are summed
        # at the update); the biases stay equal because every process applies the same summed update.
        # find_unused_parameters: an expert that gets no token in a process has no gradient under the loop dispatch
        # (what auto picks outside bf16 on CUDA); grouped_mm and bmm give every expert one.
        impl = cfg.model.moe_impl
        loop = impl == "loop" or (impl == "auto" and cfg.precision.resolved != "bf16")
        return DDPStrategy(broadcast_buffers=False, find_unused_parameters=loop), devices, s.num_nodes
    if not torch.cuda.is_available() or cfg.trainer.accelerator == "cpu":
        raise ConfigError("strategy: fsdp runs on CUDA GPUs only (Lightning's FSDP strategy); on CPU use strategy=ddp")
    from lightning.pytorch.strategies import FSDPStrategy

    from moe_lm.model.block import Block

    return FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="FULL_SHARD"), devices, s.num_nodes


def clip_grad_norm(module, max_norm: float) -> torch.Tensor:
    """The global gradient norm, clipped to max_norm: FSDP's own method where parameters are sharded (each process
    holds a slice of each gradient), torch's otherwise."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapped = module.trainer.strategy.model
    if isinstance(wrapped, FullyShardedDataParallel):
        return wrapped.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)


def mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over all processes (no gradient flows through it)."""
    out = t.detach().float().clone()
    torch.distributed.all_reduce(out)
    return out / torch.distributed.get_world_size()


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all processes; `t` itself in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out)
    return out
