"""`data.*`, `tokenizer.*`, `prepare.*`: what a run reads and how the shards are made (moe_lm/data/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from moe_lm.config.base import _check, _one_of


@dataclass
class SourceConfig:
    """One upstream dataset of a domain."""

    hub_id: str = ""  # e.g. openai/gsm8k
    config: Optional[str] = None  # HF config name, e.g. "main"
    split: str = "train"
    weight: float = 1.0  # share of the domain's token budget
    formatter: str = "text"  # moe_lm.data.formatters
    local_file: str = ""  # the same records as JSONL/parquet, relative to data.local_root
    # Files of the hub repo to stream instead of its loading code, a glob relative to the repo root (e.g.
    # data/train.us_bills.jsonl.xz). Needed where the repo still ships a loading script, which `datasets` >= 4
    # refuses to run; the glob then picks the split and `config` is not used.
    data_files: str = ""
    # A branch or ref of the hub repo to read, e.g. refs/convert/parquet (the hub's parquet conversion of a repo
    # that only has a loading script or archives); with data_files, the glob is taken in that revision.
    revision: str = ""
    gated: bool = False  # the hub requires accepting terms and a token: skipped, with a warning, when none is set


@dataclass
class DomainConfig:
    expert: Optional[int] = None  # routed expert it warm-starts; null = shared backbone only (web)
    token_budget: int = 5_000_000
    sources: List[SourceConfig] = field(default_factory=list)


@dataclass
class DataConfig:
    """Fields every data pipeline has; `data=<name>` picks one of the two schemas below."""

    seq_len: int = 64
    batch_size: int = 16
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self.seq_len > 1, "data.seq_len", "must be > 1")
        _check(self.batch_size > 0, "data.batch_size", "must be > 0")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class LinesDataConfig(DataConfig):
    """`data=overfit_100_lines`: each line of a small text file is a document (moe_lm/data/text_lines.py)."""

    path: str = ""
    # packed (whole lines per sample) | lines (one per sample) | windows (random offsets) | aligned (line starts)
    sampling: str = "packed"
    tokenizer_vocab_size: int = 32000  # target size of the BPE trained on the file

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(bool(self.path), "data.path", "must name a text file")
        _one_of(self.sampling, "data.sampling", ("packed", "lines", "windows", "aligned"))
        _check(self.tokenizer_vocab_size >= 257, "data.tokenizer_vocab_size", "must be >= 257 (256 bytes + <|endoftext|>)")

    def describe(self) -> str:
        return Path(self.path).name


@dataclass
class DomainsDataConfig(DataConfig):
    """`data=domains`: per-domain token shards written by `python -m moe_lm.prepare` (moe_lm/data/shards.py)."""

    source: str = "hub"  # hub (stream from the HF hub) | local (same schemas under local_root)
    local_root: str = ""
    # source=hub: a directory holding copies of the hub repos (<dir>/<owner>/<name>, other refs at
    # <dir>/<owner>/<name>@<revision>), streamed by the same `datasets` calls instead of the network; empty = the hub
    hub_mirror: str = ""
    domains: Dict[str, DomainConfig] = field(default_factory=dict)
    token_budget_range: List[int] = field(default_factory=lambda: [5_000_000, 50_000_000])
    shards: str = "data/shards"  # written by moe_lm.prepare
    round_robin_steps: int = 0  # phase 1: optimizer steps of single-domain batches, cycling the expert domains
    round_robin_web: bool = True  # interleave web batches in the round-robin cycle
    mixture: str = "tokens"  # phase 2 weights: tokens (proportional) | temperature | explicit
    mixture_temperature: float = 1.0  # p ~ tokens ** (1 / T)
    mixture_weights: Dict[str, float] = field(default_factory=dict)  # for mixture=explicit
    val_batches_per_domain: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.source, "data.source", ("hub", "local"))
        _one_of(self.mixture, "data.mixture", ("tokens", "temperature", "explicit"))
        _check(self.mixture_temperature > 0, "data.mixture_temperature", "must be > 0")
        _check(self.round_robin_steps >= 0, "data.round_robin_steps", "must be >= 0")
        _check(self.val_batches_per_domain > 0, "data.val_batches_per_domain", "must be > 0")
        _check(bool(self.domains), "data.domains", "needs at least one domain")
        if self.mixture == "explicit":
            _check(set(self.mixture_weights) == set(self.domains) and all(w >= 0 for w in self.mixture_weights.values())
                   and sum(self.mixture_weights.values()) > 0, "data.mixture_weights",
                   f"needs a non-negative weight for each of {sorted(self.domains)}")
        lo, hi = self.token_budget_range
        for name, d in self.domains.items():
            key = f"data.domains.{name}"
            _check(lo <= d.token_budget <= hi, key + ".token_budget",
                   f"{d.token_budget:,} is outside the accepted {lo:,}-{hi:,} tokens")
            _check(bool(d.sources), key + ".sources", "needs at least one source")
            for i, src in enumerate(d.sources):  # formatter names are checked by moe_lm.data.formatters
                _check(src.weight > 0, f"{key}.sources[{i}].weight", "must be > 0")

    def describe(self) -> str:
        return "domains (" + ", ".join(self.domains) + ")"


@dataclass
class TokenizerConfig:
    """`python -m moe_lm.tokenizer`: the multi-domain byte-level BPE."""

    vocab_size: int = 32000
    sample_bytes_per_domain: int = 2_000_000  # domain-balanced training sample
    out: str = "data/tokenizer"  # writes tokenizer.json and tokenizer.meta.json here

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 512, "tokenizer.vocab_size", "must be >= 512 (256 bytes + merges + specials)")
        _check(self.sample_bytes_per_domain > 0, "tokenizer.sample_bytes_per_domain", "must be > 0")


@dataclass
class PrepareConfig:
    """`python -m moe_lm.prepare`: token shards per domain."""

    out: str = "data/shards"
    tokenizer: str = "data/tokenizer/tokenizer.json"
    val_fraction: float = 0.01  # share of documents (not tokens) held out
    # held-out split: this share of the groups (a code file's repository, an oasst1 conversation tree, else the
    # document) is kept out of train and val by a seeded hash; their documents fill heldout.bin up to
    # heldout_tokens per domain. 0 = no held-out split
    heldout_fraction: float = 0.0
    heldout_tokens: int = 0
    batch_documents: int = 256  # documents tokenised per batch (encode_batch runs on all cores)
    checkpoint_every: int = 1024  # documents between progress checkpoints
    # 0: tokenise in this process (the tokenizer's threads use every core); N: a pool of N processes, one thread
    # each, batches in order (the same bytes either way)
    workers: int = 0
    # a document longer than this is skipped and counted (one huge record would otherwise fill a split alone)
    max_document_tokens: int = 262_144

    def __post_init__(self) -> None:
        _check(self.max_document_tokens > 0, "prepare.max_document_tokens", "must be > 0")
        _check(0.0 <= self.val_fraction < 1.0, "prepare.val_fraction", "must be in [0, 1)")
        _check(0.0 <= self.heldout_fraction < 1.0, "prepare.heldout_fraction", "must be in [0, 1)")
        _check(self.heldout_tokens >= 0, "prepare.heldout_tokens", "must be >= 0")
        _check(not self.heldout_fraction or self.heldout_tokens > 0, "prepare.heldout_tokens",
               "must be > 0 with prepare.heldout_fraction > 0 (the held-out tokens per domain)")
        _check(self.batch_documents > 0, "prepare.batch_documents", "must be > 0")
        _check(self.checkpoint_every > 0, "prepare.checkpoint_every", "must be > 0")
        _check(self.workers >= 0, "prepare.workers", "must be >= 0 (0 = in this process)")
