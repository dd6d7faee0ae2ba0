"""Token shards per domain (the library behind `python -m moe_lm.prepare data=domains`).

For each domain: stream its sources' records (hub or local files with the same schema), format them,
tokenise in batches, and append `<|endoftext|>`-separated documents to `<out>/<domain>/{train,val}.bin`
(uint16 when the vocabulary fits, else uint32) until the domain's token budget, each source filling its
weight's share. A document goes wholly to val or train (seeded hash of its position), so none is in both.

Nothing is lost on a crash: files grow as `*.partial`, and `progress.json` (rewritten atomically every
`prepare.checkpoint_every` documents) records how many documents of each source were consumed and the
byte length of each partial file at that moment. A restart truncates the partial files to those lengths
and skips the consumed documents, so nothing is duplicated or lost. `meta.json` is written last, after
the renames: a domain with `meta.json` (and the same tokenizer hash and budget) is finished and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from rich.progress import Progress
from tokenizers import Tokenizer

from moe_lm.config import ConfigError, DomainConfig, DomainsDataConfig, TrainConfig
from moe_lm.data.atomic import write_json_atomic
from moe_lm.data.formatters import Skip, format_records
from moe_lm.data.sources import iter_source
from moe_lm.data.bpe import eot_id, tokenizer_hash

SPLITS = ("train", "val")


def is_val(domain: str, source_idx: int, doc_idx: int, seed: int, fraction: float) -> bool:
    """Deterministic document-level split."""
    h = hashlib.blake2b(f"{seed}/{domain}/{source_idx}/{doc_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2 ** 64 < fraction


def source_documents(data: DomainsDataConfig, domain: DomainConfig, idx: int, sink: list[dict[str, int]]) -> Iterator[str]:
    """Formatted documents of one source; skipped records are counted by reason into sink[0]."""
    src = domain.sources[idx]

    def count(reason: str) -> None:
        sink[0][reason] = sink[0].get(reason, 0) + 1

    def rows():
        for r in iter_source(src, data):
            if isinstance(r, Skip):
                count(r.reason)
            else:
                yield r

    for doc in format_records(src.formatter, rows()):
        if isinstance(doc, Skip):
            count(doc.reason)
        else:
            yield doc


class DomainWriter:
    """Appends token arrays to the partial split files and checkpoints progress."""

    def __init__(self, root: Path, dtype: np.dtype, state: dict[str, Any]) -> None:
        self.root, self.dtype, self.state = root, dtype, state
        self.files = {}
        for split in SPLITS:
            path = root / f"{split}.bin.partial"
            size = state["bytes"][split]
            with open(path, "ab"):
                pass
            os.truncate(path, size)  # drop whatever was written after the last checkpoint
            self.files[split] = open(path, "ab")

    def append(self, split: str, ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.files[split].write(arr.tobytes())
        self.state["bytes"][split] += arr.nbytes
        self.state["tokens"][split] += arr.size
        self.state["documents"][split] += 1

    def checkpoint(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(self.root / "progress.json", self.state)

    def finish(self) -> None:
        self.checkpoint()
        for split, f in self.files.items():
            f.close()
            os.replace(self.root / f"{split}.bin.partial", self.root / f"{split}.bin")


def prepare_domain(cfg: TrainConfig, name: str, tok: Tokenizer, progress: Progress | None = None) -> dict[str, Any]:
    p, data, domain = cfg.prepare, cfg.data, cfg.data.domains[name]
    root = Path(p.out) / name
    root.mkdir(parents=True, exist_ok=True)
    thash = tokenizer_hash(tok)
    meta_path = root / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("tokenizer_hash") == thash and meta.get("token_budget") == domain.token_budget:
            return meta  # finished earlier: idempotent
        raise ConfigError(f"prepare.out: {root} holds a finished domain with another tokenizer or budget; "
                          f"delete it or choose another prepare.out")
    fresh = {"tokenizer_hash": thash, "token_budget": domain.token_budget, "consumed": [0] * len(domain.sources),
             "bytes": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS}, "documents": {s: 0 for s in SPLITS},
             "per_source_tokens": [0] * len(domain.sources), "skipped": {}, "text_bytes": 0}
    prog_path = root / "progress.json"
    state = json.loads(prog_path.read_text()) if prog_path.exists() else fresh
    if state.get("tokenizer_hash") != thash or state.get("token_budget") != domain.token_budget:
        state = fresh
    dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 2 ** 16 else np.uint32)
    writer = DomainWriter(root, dtype, state)
    eot = eot_id(tok)
    total_w = sum(s.weight for s in domain.sources)
    task = progress.add_task(name, total=domain.token_budget) if progress else None
    since = 0
    for i, src in enumerate(domain.sources):
        share = domain.token_budget * src.weight / total_w
        sink = [{}]  # resume: records passed over again are already counted in the checkpoint
        docs = source_documents(data, domain, i, sink)
        for _ in range(state["consumed"][i]):  # resume: skip what is already on disk
            next(docs, None)
        sink[0] = state["skipped"]
        while state["per_source_tokens"][i] < share:
            batch = [d for _, d in zip(range(p.batch_documents), docs)]
            if not batch:
                break
            for doc, enc in zip(batch, tok.encode_batch(batch)):
                if state["per_source_tokens"][i] >= share:
                    break
                doc_idx = state["consumed"][i]
                split = "val" if is_val(name, i, doc_idx, cfg.seed, p.val_fraction) else "train"
                writer.append(split, [eot] + enc.ids)
                state["consumed"][i] += 1
                state["per_source_tokens"][i] += len(enc.ids) + 1
                state["text_bytes"] += len(doc.encode())
                since += 1
            if since >= p.checkpoint_every:  # at a batch boundary: no document read ahead of the state
                writer.checkpoint()
                since = 0
            if progress:
                progress.update(task, completed=sum(state["per_source_tokens"]))
    writer.finish()
    shares = [domain.token_budget * s.weight / total_w for s in domain.sources]
    meta = {**{k: state[k] for k in ("tokenizer_hash", "token_budget", "tokens", "documents", "skipped", "text_bytes")},
            "dtype": dtype.name, "expert": domain.expert,
            "sources": [{"hub_id": s.hub_id, "config": s.config, "split": s.split, "local_file": s.local_file,
                         "documents": state["consumed"][i], "tokens": state["per_source_tokens"][i],
                         "share": round(shares[i]), "exhausted": state["per_source_tokens"][i] < shares[i]}
                        for i, s in enumerate(domain.sources)]}
    for src in meta["sources"]:
        if src["exhausted"]:
            warnings.warn(f"data.domains.{name}: source {src['hub_id'] or src['local_file']} ran out at "
                          f"{src['tokens']:,} of its {src['share']:,} tokens; the domain is short of its budget")
    write_json_atomic(meta_path, meta)
    prog_path.unlink(missing_ok=True)
    return meta


def prepare(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    if not isinstance(cfg.data, DomainsDataConfig):
        raise ConfigError("data: prepare needs the multi-domain data group (data=domains or an experiment using it)")
    tok_path = Path(cfg.prepare.tokenizer)
    if not tok_path.is_file():
        raise FileNotFoundError(f"prepare.tokenizer: no such file: {tok_path} (train one: python -m moe_lm.tokenizer)")
    tok = Tokenizer.from_file(str(tok_path))
    with Progress() as progress:
        return {name: prepare_domain(cfg, name, tok, progress) for name in cfg.data.domains}
