"""LightningDataModule over the per-domain token shards written by `moe_lm.prepare`.

Every training batch k is planned by `BatchPlan` from (seed, k) alone: its samples' domains (one domain per
batch in the round-robin phase, drawn from the mixture weights after) and their window starts. A sample is
seq_len + 1 consecutive tokens of that domain's `train.bin` (documents are already `<|endoftext|>`-separated),
split into inputs and targets shifted by one. Batches carry their samples' domain ids and their index k;
the state saved in checkpoints is the number of batches consumed (counted by the data module itself), so a
resumed run sees exactly the batches an uninterrupted run would. Validation: a fixed set of windows per
domain, one dataloader per domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from moe_lm.config import ConfigError, DomainsDataConfig
from moe_lm.errors import CheckpointError
from moe_lm.data.manifest import check_shard_files, check_token_ids, read_meta
from moe_lm.data.mixture import BatchPlan


def load_shard_meta(cfg: DomainsDataConfig, vocab_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Each domain's checked manifest; with vocab_size, its token ids checked against the vocabulary too."""
    metas = {}
    for name in cfg.domains:
        folder = Path(cfg.shards) / name
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"data.shards: {folder / 'meta.json'} not found; run python -m moe_lm.prepare data=domains first")
        metas[name] = meta = read_meta(folder / "meta.json")
        check_shard_files(folder, meta)
        if vocab_size is not None:
            check_token_ids(folder, meta, vocab_size)
    return metas


class _Shards:
    """Memory-maps opened lazily, once per process (DataLoader workers included)."""

    def __init__(self, root: Path, names: list[str], split: str, dtypes: list[str]) -> None:
        self.paths = [root / n / f"{split}.bin" for n in names]
        self.dtypes = dtypes
        self._maps: list[np.memmap] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    @property
    def maps(self) -> list[np.memmap]:
        if self._maps is None:
            self._maps = [np.memmap(p, dtype=d, mode="r") if p.stat().st_size else np.zeros(0, dtype=d)
                          for p, d in zip(self.paths, self.dtypes)]
        return self._maps

    def window(self, domain: int, start: int, width: int) -> np.ndarray:
        return np.asarray(self.maps[domain][start:start + width], dtype=np.int64)


def to_batch(windows: list[np.ndarray], domains: np.ndarray, batch_id: int) -> dict[str, torch.Tensor]:
    x = torch.from_numpy(np.stack(windows))  # (B, T+1)
    return {"input_ids": x[:, :-1].contiguous(), "targets": x[:, 1:].contiguous(),
            "domain": torch.as_tensor(domains, dtype=torch.long), "batch_id": torch.tensor(batch_id)}


class PlannedBatches(Dataset):
    """Item k is training batch k, or with several processes this process's rows of it (`rank` of `world`
    contiguous equal shares): the global batch, and so the data order, do not depend on the number of processes."""

    def __init__(self, shards: _Shards, plan: BatchPlan, rank: int = 0, world: int = 1) -> None:
        if plan.cfg.batch_size % world:
            raise ConfigError(f"data.batch_size: {plan.cfg.batch_size} is the global batch; it must divide evenly "
                              f"over {world} processes")
        self.shards, self.plan = shards, plan
        share = plan.cfg.batch_size // world
        self.rows = slice(rank * share, (rank + 1) * share)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        domains, starts = (a[self.rows] for a in self.plan.batch(k))
        return to_batch([self.shards.window(int(d), int(s), self.plan.width) for d, s in zip(domains, starts)],
                        domains, k)


class CountFrom(Sampler[int]):
    """k, k+1, k+2, ... without end (the Trainer stops at max_steps)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        k = self.start
        while True:
            yield k
            k += 1


class DomainDataModule(L.LightningDataModule):
    def __init__(self, cfg: DomainsDataConfig, seed: int, accumulate: int = 1, vocab_size: int | None = None) -> None:
        """vocab_size: the model's; every token id of the shards is checked to be below it."""
        super().__init__()
        self.cfg, self.seed, self.accumulate = cfg, seed, accumulate
        self.names = list(cfg.domains)
        self.consumed = 0  # training batches consumed so far (the resume state)
        self.metas = load_shard_meta(cfg, vocab_size)
        dtypes = [m["dtype"] for m in self.metas.values()]
        root = Path(cfg.shards)
        self.train_shards = _Shards(root, self.names, "train", dtypes)
        self.val_shards = _Shards(root, self.names, "val", dtypes)
        self.plan = BatchPlan(cfg, [m["tokens"]["train"] for m in self.metas.values()], seed, accumulate)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer  # None outside a Trainer (tests): one process
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(PlannedBatches(self.train_shards, self.plan, rank, world), batch_size=None,
                          sampler=CountFrom(self.consumed), num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0)

    def val_batches(self, domain: int) -> list[dict[str, torch.Tensor]]:
        """Non-overlapping windows from the start of the domain's val split (fixed for a run)."""
        width, B = self.plan.width, self.cfg.batch_size
        n = len(self.val_shards.maps[domain])
        starts = list(range(0, n - width + 1, width))[: self.cfg.val_batches_per_domain * B]
        return [to_batch([self.val_shards.window(domain, s, width) for s in starts[i:i + B]],
                         np.full(len(starts[i:i + B]), domain), -1) for i in range(0, len(starts), B)]

    def val_dataloader(self) -> list[DataLoader]:
        loaders = []
        for d, name in enumerate(self.names):
            batches = self.val_batches(d)
            if not batches:  # per-domain validation of this domain would silently not happen
                raise ConfigError(f"data.domains.{name}: its val split has {len(self.val_shards.maps[d]):,} tokens, "
                                  f"less than one window of data.seq_len + 1 = {self.plan.width}; prepare it with a "
                                  f"larger token_budget or prepare.val_fraction, or set "
                                  f"trainer.val_check_interval=null")
            loaders.append(DataLoader(batches, batch_size=None))
        return loaders

    def on_before_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        """Count training batch k as consumed before its step runs: every checkpoint saved after the step (at batch
        end, by any callback, on a signal) then resumes at batch k + 1. Validation batches carry batch_id -1."""
        if int(batch["batch_id"]) >= 0:
            self.consumed = int(batch["batch_id"]) + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed, "accumulate": self.accumulate,
                "plan": self.plan.describe()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved batch, refusing a state made with another seed, accumulation or batch plan (it
        would silently replay other batches than the run it continues)."""
        ours = {"seed": self.seed, "accumulate": self.accumulate, "plan": self.plan.describe()}
        keys = {"seed": "seed", "accumulate": "trainer.accumulate_grad_batches", "plan": "data"}
        for k, now in ours.items():
            if k in state and state[k] != now:
                raise CheckpointError(f"{keys[k]}: the checkpoint's data order was made with {k} {state[k]!r}, this "
                                      f"config gives {now!r}; resume with the same settings or start a new run")
        self.consumed = int(state["consumed"])
