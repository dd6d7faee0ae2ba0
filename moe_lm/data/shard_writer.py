"""Token shards per domain (the library behind `python -m moe_lm.prepare data=domains`).

For each domain: stream its sources' records (hub or local files with the same schema), format them,
tokenise in batches, and append `<|endoftext|>`-separated documents to `<out>/<domain>/{train,val}.bin`
(uint16 when the vocabulary fits, else uint32) until the domain's token budget, each source filling its
weight's share. A document goes wholly to val or train (seeded hash of its position), so none is in both;
once a domain has written all but `val_fraction` of its budget, documents go to val until val holds that
fraction, so a domain of few long documents still gets a validation split.

The held-out split (`prepare.heldout_fraction` > 0) is text from outside the training documents' groups: a
seeded hash of each document's group (a code file's repository, an oasst1 conversation tree, else the document
itself; moe_lm/data/formatters.py) keeps that share of the groups out of train and val altogether, and their
documents fill `heldout.bin` up to `prepare.heldout_tokens` per domain (split over the sources by weight). A
source is read past its train/val share until its held-out share is full or it ends.

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
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from rich.progress import Progress

from moe_lm.config import ConfigError, DomainConfig, DomainsDataConfig, TrainConfig
from moe_lm.data.files import DirectoryLock, naming, remove_stale_temporaries, write_json_atomic
from moe_lm.data.formatters import GROUPS, Skip, format_records
from moe_lm.data.sources import iter_source
from moe_lm.data.bpe import eot_id, load_tokenizer, tokenizer_hash
from moe_lm.data.manifest import read_meta
from moe_lm.data.encoding import Encoder, batched

SPLITS = ("train", "val", "heldout")


def is_val(domain: str, source_idx: int, doc_idx: int, seed: int, fraction: float) -> bool:
    """Deterministic document-level split."""
    h = hashlib.blake2b(f"{seed}/{domain}/{source_idx}/{doc_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2 ** 64 < fraction


def is_heldout(domain: str, key: str, seed: int, fraction: float) -> bool:
    """Whether a document's group (its key: repository, tree or text) is kept apart for the held-out split. The
    hash does not depend on the source, so a repository in two sources of a domain is held out from both."""
    if fraction <= 0:  # no held-out split: no hash of every document's text
        return False
    h = hashlib.blake2b(f"heldout/{seed}/{domain}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2 ** 64 < fraction


def heldout_rule(cfg: TrainConfig) -> dict[str, Any] | None:
    """What meta.json records of the held-out split (None without one); a finished domain must match it."""
    p = cfg.prepare
    if p.heldout_fraction <= 0:
        return None
    return {"fraction": p.heldout_fraction, "tokens": p.heldout_tokens, "seed": cfg.seed,
            "groups": {**GROUPS, "other": "the document"}}


def source_documents(data: DomainsDataConfig, domain: DomainConfig, idx: int, sink: list[dict[str, int]],
                     keyed: bool = False) -> Iterator[Any]:
    """Formatted documents of one source (with keyed: (group key, document)); skipped records are counted by
    reason into sink[0]."""
    src = domain.sources[idx]

    def count(reason: str) -> None:
        sink[0][reason] = sink[0].get(reason, 0) + 1

    def rows():
        for r in iter_source(src, data):
            if isinstance(r, Skip):
                count(r.reason)
            else:
                yield r

    for item in format_records(src.formatter, rows(), keyed=keyed):
        doc = item[1] if keyed else item
        if isinstance(doc, Skip):
            count(doc.reason)
        else:
            yield item


class DomainWriter:
    """Appends token arrays to the partial split files and checkpoints progress."""

    def __init__(self, root: Path, dtype: np.dtype, state: dict[str, Any]) -> None:
        self.root, self.dtype, self.state = root, dtype, state
        self.files = {}
        for split in state["bytes"]:
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


def fresh_state(thash: str, domain: DomainConfig, rule: dict[str, Any] | None = None) -> dict[str, Any]:
    n, splits = len(domain.sources), SPLITS if rule else SPLITS[:2]  # heldout.bin only with a held-out split
    return {"tokenizer_hash": thash, "token_budget": domain.token_budget, "heldout": rule, "complete": False,
            "consumed": [0] * n, "bytes": {s: 0 for s in splits}, "tokens": {s: 0 for s in splits},
            "documents": {s: 0 for s in splits}, "per_source_tokens": [0] * n, "heldout_per_source": [0] * n,
            "skipped": {}, "text_bytes": 0}


def shares(cfg: TrainConfig, domain: DomainConfig) -> tuple[list[float], list[float]]:
    """Each source's token share of the domain's budget, and of its held-out tokens (0 without a held-out split)."""
    total_w, held = sum(s.weight for s in domain.sources), cfg.prepare.heldout_tokens if heldout_rule(cfg) else 0
    return ([domain.token_budget * s.weight / total_w for s in domain.sources],
            [held * s.weight / total_w for s in domain.sources])


def write_documents(cfg: TrainConfig, name: str, encoder: Encoder, writer: DomainWriter, progress, task) -> None:
    """Stream the domain's sources into the writer until each source's shares, checkpointing as it goes."""
    p, data, domain, state = cfg.prepare, cfg.data, cfg.data.domains[name], writer.state
    eot, since = eot_id(encoder.tok), 0
    budget, held_budget = shares(cfg, domain)

    def done(i: int) -> bool:
        return state["per_source_tokens"][i] >= budget[i] and state["heldout_per_source"][i] >= held_budget[i]

    for i, src in enumerate(domain.sources):
        if done(i):
            continue
        sink = [{}]  # resume: records passed over again are already counted in the checkpoint
        docs = source_documents(data, domain, i, sink, keyed=True)
        for _ in range(state["consumed"][i]):  # resume: skip what is already on disk
            next(docs, None)
        sink[0] = state["skipped"]
        held: deque[bool] = deque()  # whether each document read ahead by the encoder is kept apart, in order

        def texts() -> Iterator[str]:
            for key, doc in docs:
                held.append(is_heldout(name, key, cfg.seed, p.heldout_fraction))
                yield doc

        for ids_batch, bytes_batch in encoder.map(batched(texts(), p.batch_documents)):
            for ids, n_bytes in zip(ids_batch, bytes_batch):
                kept_apart = held.popleft()
                if done(i):
                    break
                doc_idx, n = state["consumed"][i], len(ids) + 1
                state["consumed"][i] += 1
                since += 1
                if len(ids) > p.max_document_tokens:  # skipped by name, never allowed to fill a split alone
                    reason = f"longer than prepare.max_document_tokens ({p.max_document_tokens:,} tokens)"
                    state["skipped"][reason] = state["skipped"].get(reason, 0) + 1
                elif kept_apart:  # never in train or val; written while the source's held-out share lasts
                    if state["heldout_per_source"][i] < held_budget[i]:
                        writer.append("heldout", eot, ids)
                        state["heldout_per_source"][i] += n
                elif state["per_source_tokens"][i] < budget[i]:  # past it, read on for held-out groups only
                    writer.append(split_of(name, i, doc_idx, n, state, cfg.seed, p.val_fraction), eot, ids)
                    state["per_source_tokens"][i] += n
                    state["text_bytes"] += n_bytes
            if since >= p.checkpoint_every:  # at a batch boundary: the state counts exactly what is on disk
                writer.checkpoint()
                since = 0
            if progress:
                progress.update(task, completed=sum(state["per_source_tokens"]))
            if done(i):
                break


def domain_meta(cfg: TrainConfig, state: dict[str, Any], domain: DomainConfig, dtype: np.dtype) -> dict[str, Any]:
    budget, held = shares(cfg, domain)
    return {**{k: state[k] for k in ("tokenizer_hash", "token_budget", "tokens", "documents", "skipped", "text_bytes")},
            "dtype": dtype.name, "expert": domain.expert, "heldout": state["heldout"],
            "sources": [{"hub_id": s.hub_id, "config": s.config, "split": s.split, "local_file": s.local_file,
                         "documents": state["consumed"][i], "tokens": state["per_source_tokens"][i],
                         "share": round(budget[i]), "exhausted": state["per_source_tokens"][i] < budget[i],
                         "heldout_tokens": state["heldout_per_source"][i], "heldout_share": round(held[i])}
                        for i, s in enumerate(domain.sources)]}


def finish_domain(root: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """complete progress.json -> renames -> meta.json -> no progress.json; each step safe to redo after a crash."""
    if not state.get("complete"):
        state["complete"] = True
        write_json_atomic(root / "progress.json", state)
    for split in state["bytes"]:
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
    if meta.get("heldout") and meta["tokens"]["heldout"] < seq_len + 1:
        warnings.warn(f"data.domains.{name}: its held-out split has {meta['tokens']['heldout']:,} tokens, less than "
                      f"one window of data.seq_len + 1 = {seq_len + 1}: too few of its groups were kept apart; raise "
                      f"prepare.heldout_fraction")
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
    rule = heldout_rule(cfg)
    if meta_path.exists():
        meta = read_meta(meta_path, "prepare.out")
        if (meta.get("tokenizer_hash") == thash and meta.get("token_budget") == domain.token_budget
                and meta.get("heldout") == rule):
            prog_path.unlink(missing_ok=True)  # a crash after meta.json, before this
            return meta  # finished earlier: idempotent
        raise ConfigError(f"prepare.out: {root} holds a finished domain with another tokenizer, budget or held-out "
                          f"split (prepare.heldout_*); delete it or choose another prepare.out")
    state = json.loads(prog_path.read_text()) if prog_path.exists() else None
    if (state is None or state.get("tokenizer_hash") != thash or state.get("token_budget") != domain.token_budget
            or state.get("heldout") != rule or "heldout_per_source" not in state):
        state = fresh_state(thash, domain, rule)
    dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 2 ** 16 else np.uint32)
    if not state.get("complete"):
        writer = DomainWriter(root, dtype, state)
        task = progress.add_task(name, total=domain.token_budget) if progress else None
        write_documents(cfg, name, encoder, writer, progress, task)
        writer.checkpoint()
        writer.close()
    meta = domain_meta(cfg, state, domain, dtype)
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
