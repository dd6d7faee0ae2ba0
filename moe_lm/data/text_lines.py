"""A small text file as training data, one document per line (the overfit demo).

Lines are wrapped as `<|endoftext|> line` and packed greedily, whole, into chunks of at most
seq_len + 1 tokens, in file order (`data.pack_lines=true`), or kept one line per sample. Packing
matters for memorisation: a sample that starts at a line start cannot predict that line's first
token from `<|endoftext|>` alone, so one line per sample leaves an irreducible loss of roughly
log(100) nats on every line's first token. Samples are padded per batch; padded targets are -100.
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


def pack_lines(samples: list[list[int]], max_len: int, eot: int) -> list[list[int]]:
    """Greedily concatenate whole samples (each starting with EOT) into chunks of <= max_len tokens."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    for s in samples:
        body = s[:-1] if s[-1] == eot else s  # the next sample's leading EOT separates them
        if cur and len(cur) + len(body) + 1 > max_len:
            chunks.append(cur + [eot])
            cur = []
        cur = cur + body
    if cur:
        chunks.append((cur + [eot])[:max_len])
    return chunks


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
        self.pad_id = eot_id(tokenizer)
        self.samples = encode_lines(self.lines, tokenizer, cfg.seq_len)
        if cfg.pack_lines:
            self.samples = pack_lines(self.samples, cfg.seq_len + 1, self.pad_id)

    def _loader(self, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.samples, batch_size=self.cfg.batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=partial(collate, pad_id=self.pad_id), num_workers=self.cfg.num_workers,
                          drop_last=False, persistent_workers=self.cfg.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)
