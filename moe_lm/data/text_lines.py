"""One training sample per line of a text file: `<|endoftext|> line <|endoftext|>`.

Used by the overfit demo. Samples are padded per batch; padded targets are -100 (ignored).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from moe_lm.config import DataConfig
from moe_lm.data.tokenizer import eot_id

IGNORE_INDEX = -100


def read_lines(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.path: no such file: {p.resolve()}")
    lines = [ln.rstrip("\n") for ln in p.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise ValueError(f"data.path: {p} has no non-empty lines")
    return lines


def encode_lines(lines: list[str], tok: Tokenizer, seq_len: int) -> list[list[int]]:
    """Each line as EOT + ids + EOT, cut to seq_len + 1 tokens (inputs and shifted targets)."""
    eot = eot_id(tok)
    return [([eot] + enc.ids + [eot])[: seq_len + 1] for enc in tok.encode_batch(lines)]


def collate(samples: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sample; targets are inputs shifted left by one, padding ignored."""
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.bool)
    for i, s in enumerate(samples):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)
    return {"input_ids": ids[:, :-1].contiguous(), "targets": targets.contiguous()}


class TextLinesDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.seed = seed
        self.lines = read_lines(cfg.path)
        self.samples = encode_lines(self.lines, tokenizer, cfg.seq_len)
        self.pad_id = eot_id(tokenizer)

    def _loader(self, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.samples, batch_size=self.cfg.batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=partial(collate, pad_id=self.pad_id), num_workers=self.cfg.num_workers,
                          drop_last=False, persistent_workers=self.cfg.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)
