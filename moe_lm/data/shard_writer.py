"""Token shards per domain (the library behind `python -m moe_lm.prepare data=domains`).

For each domain: stream its sources' records (hub or local files with the same schema), format them,
tokenise in batches, and append `<|endoftext|>`-separated documents to `<out>/<domain>/{train,val}.bin`
(uint16 when the vocabulary fits, else uint32) until the domain's token budget, each source filling its
weight's share. A document goes wholly to val or train (seeded hash of its position), so none is in both;
once a domain has written all but `val_fraction` of its budget, documents go to val until val holds that
fraction, so a domain of few long documents still gets a validation split.

Nothing is lost on a crash, and a crash between any two file operations resumes to the same bytes:
1. files grow as `*.partial`; `progress.json` (written atomically every `prepare.checkpoint_every` documents)
   records the documents consumed per source and the byte length of each partial file at that moment. A
   restart truncates the partial files to those lengths (refusing, never padding, a file shorter than recorded)
   and skips the consumed documents.
2. at the end, `progress.json` is marked complete, then each `*.partial` is renamed to `*.bin`, then `meta.json`
   is written, then `progress.json` is removed. A restart finds where that sequence stopped and finishes it.
A domain with `meta.json` (and the same tokenizer hash and budget) is finished and skipped. `<out>/.lock` keeps a
second prepare out of the directory while one runs.
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

from moe_lm.config import ConfigError, DomainConfig, DomainsDataConfig, TrainConfig
from moe_lm.data.files import DirectoryLock, naming, remove_stale_temporaries, write_json_atomic
from moe_lm.data.formatters import Skip, format_records
from moe_lm.data.sources import iter_source
from moe_lm.data.bpe import eot_id, load_tokenizer, tokenizer_hash
from moe_lm.data.manifest import read_meta
from moe_lm.data.encoding import Encoder, batched

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
            size, recorded = (path.stat().st_size if path.exists() else 0), state["bytes"][split]
            if size < recorded:  # never pad with zeros: the bytes recorded as written are gone
                raise ConfigError(f"prepare.out: {path} holds {size:,} bytes but progress.json records {recorded:,}; "
                                  f"delete {root} to prepare this domain again")
            with open(path, "ab"):
                pass
            os.truncate(path, recorded)  # drop whatever was written after the last checkpoint
            self.files[split] = open(path, "ab")

    def append(self, split: str, eot: int, ids: np.ndarray) -> None:
        """One document: the end-of-text separator, then its tokens."""
        arr = np.empty(len(ids) + 1, dtype=self.dtype)
        arr[0], arr[1:] = eot, ids
        with naming(self.root / f"{split}.bin.partial"):
            self.files[split].write(arr.tobytes())
        self.state["bytes"][split] += arr.nbytes
        self.state["tokens"][split] += arr.size
        self.state["documents"][split] += 1

    def checkpoint(self) -> None:
        for split, f in self.files.items():
            with naming(self.root / f"{split}.bin.partial"):
                f.flush()
                os.fsync(f.fileno())
        write_json_atomic(self.root / "progress.json", self.state)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def split_of(name: str, i: int, doc_idx: int, n_tokens: int, state: dict[str, Any], seed: int, fraction: float) -> str:
    """val by the seeded hash of the document's position, or to top val up to `fraction` of the budget once
    the domain has written all but that fraction (the tail), else train."""
    if is_val(name, i, doc_idx, seed, fraction):
        return "val"
    budget, val = state["token_budget"], state["tokens"]["val"]
    tail = sum(state["per_source_tokens"]) + n_tokens > budget * (1 - fraction)
    return "val" if tail and val < budget * fraction else "train"


def fresh_state(thash: str, domain: DomainConfig) -> dict[str, Any]:
    n = len(domain.sources)
    return {"tokenizer_hash": thash, "token_budget": domain.token_budget, "complete": False, "consumed": [0] * n,
            "bytes": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS}, "documents": {s: 0 for s in SPLITS},
            "per_source_tokens": [0] * n, "skipped": {}, "text_bytes": 0}


def write_documents(cfg: TrainConfig, name: str, encoder: Encoder, writer: DomainWriter, progress, task) -> None:
    """Stream the domain's sources into the writer until each source's share, checkpointing as it goes."""
    p, data, domain, state = cfg.prepare, cfg.data, cfg.data.domains[name], writer.state
    eot, total_w, since = eot_id(encoder.tok), sum(s.weight for s in domain.sources), 0
    for i, src in enumerate(domain.sources):
        share = domain.token_budget * src.weight / total_w
        if state["per_source_tokens"][i] >= share:
            continue
        sink = [{}]  # resume: records passed over again are already counted in the checkpoint
        docs = source_documents(data, domain, i, sink)
        for _ in range(state["consumed"][i]):  # resume: skip what is already on disk
            next(docs, None)
        sink[0] = state["skipped"]
        for ids_batch, bytes_batch in encoder.map(batched(docs, p.batch_documents)):
            for ids, n_bytes in zip(ids_batch, bytes_batch):
                if state["per_source_tokens"][i] >= share:
                    break
                if len(ids) > p.max_document_tokens:  # skipped by name, never allowed to fill a split alone
                    reason = f"longer than prepare.max_document_tokens ({p.max_document_tokens:,} tokens)"
                    state["skipped"][reason] = state["skipped"].get(reason, 0) + 1
                    state["consumed"][i] += 1
                    since += 1
                    continue
                split = split_of(name, i, state["consumed"][i], len(ids) + 1, state, cfg.seed, p.val_fraction)
                writer.append(split, eot, ids)
                state["consumed"][i] += 1
                state["per_source_tokens"][i] += len(ids) + 1
                state["text_bytes"] += n_bytes
                since += 1
            if since >= p.checkpoint_every:  # at a batch boundary: the state counts exactly what is on disk
                writer.checkpoint()
                since = 0
            if progress:
                progress.update(task, completed=sum(state["per_source_tokens"]))
            if state["per_source_tokens"][i] >= share:
                break


def domain_meta(state: dict[str, Any], domain: DomainConfig, dtype: np.dtype) -> dict[str, Any]:
    total_w = sum(s.weight for s in domain.sources)
    shares = [domain.token_budget * s.weight / total_w for s in domain.sources]
    return {**{k: state[k] for k in ("tokenizer_hash", "token_budget", "tokens", "documents", "skipped", "text_bytes")},
            "dtype": dtype.name, "expert": domain.expert,
            "sources": [{"hub_id": s.hub_id, "config": s.config, "split": s.split, "local_file": s.local_file,
                         "documents": state["consumed"][i], "tokens": state["per_source_tokens"][i],
                         "share": round(shares[i]), "exhausted": state["per_source_tokens"][i] < shares[i]}
                        for i, s in enumerate(domain.sources)]}


def finish_domain(root: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """complete progress.json -> renames -> meta.json -> no progress.json; each step safe to redo after a crash."""
    if not state.get("complete"):
        state["complete"] = True
        write_json_atomic(root / "progress.json", state)
    for split in SPLITS:
        partial, final = root / f"{split}.bin.partial", root / f"{split}.bin"
        if partial.exists():
            os.truncate(partial, state["bytes"][split])
            os.replace(partial, final)
        if not final.exists() or final.stat().st_size != state["bytes"][split]:
            raise ConfigError(f"prepare.out: {final} is missing or not the recorded {state['bytes'][split]:,} bytes; "
                              f"delete {root} to prepare this domain again")
    write_json_atomic(root / "meta.json", meta)
    (root / "progress.json").unlink()


def check_domain(name: str, meta: dict[str, Any], seq_len: int) -> None:
    """A domain that prepared nothing fails; one short of its budget or of a validation window warns."""
    if meta["tokens"]["train"] == 0:
        raise ConfigError(f"data.domains.{name}: its sources gave no documents (skipped: {meta['skipped'] or 'none'}); "
                          f"check their files or hub ids")
    for src in meta["sources"]:
        if src["exhausted"]:
            warnings.warn(f"data.domains.{name}: source {src['hub_id'] or src['local_file']} ran out at "
                          f"{src['tokens']:,} of its {src['share']:,} tokens; the domain is short of its budget")
    for reason, n in meta["skipped"].items():
        if reason.startswith("longer than prepare.max_document_tokens"):
            warnings.warn(f"data.domains.{name}: {n:,} document(s) skipped as {reason}; raise that setting to keep them")
    if meta["tokens"]["val"] < seq_len + 1:
        warnings.warn(f"data.domains.{name}: its val split has {meta['tokens']['val']:,} tokens, less than one window "
                      f"of data.seq_len + 1 = {seq_len + 1}; raise its token_budget or prepare.val_fraction")


def prepare_domain(cfg: TrainConfig, name: str, encoder: Encoder, progress: Progress | None = None) -> dict[str, Any]:
    domain = cfg.data.domains[name]
    root = Path(cfg.prepare.out) / name
    root.mkdir(parents=True, exist_ok=True)
    tok = encoder.tok
    remove_stale_temporaries(root)
    thash, meta_path, prog_path = tokenizer_hash(tok), root / "meta.json", root / "progress.json"
    if meta_path.exists():
        meta = read_meta(meta_path, "prepare.out")
        if meta.get("tokenizer_hash") == thash and meta.get("token_budget") == domain.token_budget:
            prog_path.unlink(missing_ok=True)  # a crash after meta.json, before this
            return meta  # finished earlier: idempotent
        raise ConfigError(f"prepare.out: {root} holds a finished domain with another tokenizer or budget; "
                          f"delete it or choose another prepare.out")
    state = json.loads(prog_path.read_text()) if prog_path.exists() else None
    if state is None or state.get("tokenizer_hash") != thash or state.get("token_budget") != domain.token_budget:
        state = fresh_state(thash, domain)
    dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 2 ** 16 else np.uint32)
    if not state.get("complete"):
        writer = DomainWriter(root, dtype, state)
        task = progress.add_task(name, total=domain.token_budget) if progress else None
        write_documents(cfg, name, encoder, writer, progress, task)
        writer.checkpoint()
        writer.close()
    meta = domain_meta(state, domain, dtype)
    check_domain(name, meta, cfg.data.seq_len)
    finish_domain(root, state, meta)
    return meta


def prepare(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    if not isinstance(cfg.data, DomainsDataConfig):
        raise ConfigError("data: prepare needs the multi-domain data group (data=domains or an experiment using it)")
    tok_path = Path(cfg.prepare.tokenizer)
    if not tok_path.is_file():
        raise FileNotFoundError(f"prepare.tokenizer: no such file: {tok_path} (train one: python -m moe_lm.tokenizer data=domains)")
    tok = load_tokenizer(tok_path)
    with DirectoryLock(Path(cfg.prepare.out), "prepare.out", "prepare"), Progress() as progress, \
            Encoder(tok, cfg.prepare.workers) as encoder:
        return {name: prepare_domain(cfg, name, encoder, progress) for name in cfg.data.domains}
