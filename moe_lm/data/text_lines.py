"""A small text file as training data, one document per line (the overfit demo).

`data.sampling` picks how lines become samples:
- `lines`: one line per sample, `<|endoftext|> line <|endoftext|>`, padded per batch (targets -100).
  A sample cannot predict its line's first token from `<|endoftext|>` alone, so this leaves an
  irreducible loss of about log(#lines) nats on every line start (~0.1 nats/token on the demo file).
- `packed`: whole lines, in file order, packed greedily into samples of at most seq_len + 1 tokens;
  with a short seq_len that is one or two lines per sample (no padding waste). Only a sample's first
  line start is unpredictable; a long seq_len lets the model lean on the previous lines, and it then
  fails to recall a line from its own first tokens.
- `windows`: the lines, in file order and separated by `<|endoftext|>`, form one circular token
  stream; each sample is a window of seq_len + 1 tokens at a uniformly random offset. Every line is
  seen with every amount of left context, so the model learns to continue a line from its own first
  tokens, and only a window's first few positions are ambiguous (the nanoGPT recipe).
- `aligned`: windows of that circular stream that start at a line start (`<|endoftext|>`), one
  per line. Each line is seen both from its own first tokens (as a sample's first line, exactly the
  greedy-decode prompt) and after the previous lines; only a sample's first line start is ambiguous,
  so the loss floor is about log(#lines) / seq_len nats per token. Few distinct samples (one per
  line) make it fast to memorise.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from moe_lm.config import ConfigError, LinesDataConfig
from moe_lm.data.bpe import eot_id
from moe_lm.model.loss import IGNORE_INDEX  # the target of a padding position


def read_lines(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.path: no such file: {p.resolve()}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path: {p} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})")
    # Lines end at \n, \r\n or \r; U+2028 and the other separators str.splitlines knows are text inside a line.
    lines = [ln for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]
    if not lines:
        raise ConfigError(f"data.path: {p} has no non-empty lines")
    return lines


def encode_lines(lines: list[str], tok: Tokenizer, seq_len: int) -> list[list[int]]:
    """Each line as EOT + ids + EOT, cut to seq_len + 1 tokens (inputs and shifted targets)."""
    eot = eot_id(tok)
    return [([eot] + enc.ids + [eot])[: seq_len + 1] for enc in tok.encode_batch(lines)]


class CircularWindows(Dataset):
    """Windows of `width` tokens of a circular token stream, starting at `offsets` (default: every offset)."""

    def __init__(self, stream: list[int], width: int, offsets: list[int] | None = None) -> None:
        reps = -(-width // len(stream))  # wrap around (more than once for a short stream): every window is full
        self.stream = torch.tensor(stream * (reps + 1))
        self.offsets = list(range(len(stream))) if offsets is None else offsets
        self.width = width

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> list[int]:
        offset = self.offsets[i]
        return self.stream[offset: offset + self.width].tolist()


def aligned_windows(stream: list[int], width: int, eot: int) -> CircularWindows:
    """The windows of the line stream that start at a line start (its `<|endoftext|>`), one per line."""
    return CircularWindows(stream, width, [i for i, t in enumerate(stream) if t == eot])


def pack_lines(samples: list[list[int]], max_len: int, eot: int) -> list[list[int]]:
    """Greedily concatenate whole samples (EOT + line + EOT) into chunks of at most max_len tokens."""
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


def line_stream(lines: list[str], tok: Tokenizer) -> list[int]:
    """EOT line EOT line ... in file order."""
    eot = eot_id(tok)
    return [t for enc in tok.encode_batch(lines) for t in [eot] + enc.ids]


class StepBatches(Sampler[list]):
    """Batches of `sampler`'s indices for one epoch; each index comes paired with the number of targets in its
    optimizer step (the `accumulate` consecutive batches it belongs to, as Lightning groups them), so the loss can
    weight micro-batches by their valid tokens: the step's gradient is then that of one big batch."""

    def __init__(self, sampler: Sampler[int], batch_size: int, accumulate: int, n_targets: list[int]) -> None:
        self.sampler, self.batch_size, self.accumulate, self.n_targets = sampler, batch_size, accumulate, n_targets

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = list(self.sampler)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for g in range(0, len(batches), self.accumulate):
            group = batches[g:g + self.accumulate]
            total = sum(self.n_targets[i] for batch in group for i in batch)
            yield from ([(i, total) for i in batch] for batch in group)


class WithStepTargets(Dataset):
    """dataset[(i, step_targets)] -> (dataset[i], step_targets), for `StepBatches`."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> tuple[list[int], int]:
        return self.data[item[0]], item[1]


def collate_step(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    return {**collate([s for s, _ in items], pad_id), "step_targets": torch.tensor(items[0][1])}


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
    def __init__(self, cfg: LinesDataConfig, tokenizer: Tokenizer, seed: int, accumulate: int = 1) -> None:
        super().__init__()
        self.cfg, self.accumulate = cfg, accumulate
        self.tokenizer = tokenizer
        self.seed = seed
        self.lines = read_lines(cfg.path)
        self.pad_id = eot_id(tokenizer)
        self.line_samples = encode_lines(self.lines, tokenizer, cfg.seq_len)
        if cfg.sampling == "windows":
            stream = line_stream(self.lines, tokenizer)
            if len(stream) < cfg.seq_len + 1:
                raise ConfigError(f"data.seq_len: {cfg.seq_len} needs more than the {len(stream)} tokens in {cfg.path}")
            self.train_set: Dataset | list = CircularWindows(stream, cfg.seq_len + 1)
            # Each token of the stream once, from consecutive windows (the last one wraps around).
            self.eval_set = [self.train_set[o] for o in range(0, len(stream), cfg.seq_len)]
        elif cfg.sampling == "aligned":
            self.train_set = aligned_windows(line_stream(self.lines, tokenizer), cfg.seq_len + 1, self.pad_id)
            self.eval_set = [self.train_set[i] for i in range(len(self.train_set))]  # the whole training distribution
        elif cfg.sampling == "packed":
            self.train_set = self.eval_set = pack_lines(self.line_samples, cfg.seq_len + 1, self.pad_id)
        else:
            self.train_set = self.eval_set = self.line_samples

    def train_dataloader(self) -> DataLoader:
        sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(self.seed))
        n_targets = [len(self.train_set[i]) - 1 for i in range(len(self.train_set))]
        return DataLoader(WithStepTargets(self.train_set), num_workers=self.cfg.num_workers,
                          batch_sampler=StepBatches(sampler, self.cfg.batch_size, self.accumulate, n_targets),
                          collate_fn=partial(collate_step, pad_id=self.pad_id),
                          persistent_workers=self.cfg.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.cfg.batch_size)

    def eval_dataloader(self, batch_size: int) -> DataLoader:
        """The evaluation set in order, `batch_size` samples a batch (padding is ignored by the loss)."""
        return DataLoader(self.eval_set, batch_size=batch_size, collate_fn=partial(collate, pad_id=self.pad_id),
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)
