"""Train the multi-domain tokenizer: `python -m moe_lm.tokenizer data=domains data.source=local|hub [overrides]`.

A byte-level BPE (moe_lm.data.tokenizer) with `<|endoftext|>` and the chat role tokens, trained on a
domain-balanced sample (`tokenizer.sample_bytes_per_domain` of formatted text from each domain, split
across its sources by weight). Writes `tokenizer.json` and `tokenizer.meta.json` (hash, vocab size,
bytes per token per domain, round-trip result) under `tokenizer.out`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from rich.progress import track

from moe_lm.config import ConfigError, DataConfig, TrainConfig
from moe_lm.data.formatters import ROLE_TOKENS, Skip, format_records
from moe_lm.data.sources import iter_source
from moe_lm.data.tokenizer import SPECIAL_TOKENS, tokenizer_hash, train_bpe


def domain_documents(data: DataConfig, domain: str, max_bytes: int) -> Iterator[str]:
    """Formatted documents of one domain, each source contributing up to its weight's share of max_bytes."""
    sources = data.domains[domain].sources
    total_w = sum(s.weight for s in sources)
    for src in sources:
        budget = max_bytes * src.weight / total_w
        used = 0
        rows = (r for r in iter_source(src, data) if not isinstance(r, Skip))
        for doc in format_records(src.formatter, rows):
            if isinstance(doc, Skip):
                continue
            if used >= budget:
                break
            used += len(doc.encode())
            yield doc


def train_domain_tokenizer(cfg: TrainConfig) -> tuple[object, dict]:
    if not cfg.data.domains:
        raise ConfigError("data.domains: empty; use data=domains")
    t = cfg.tokenizer
    samples = {d: list(domain_documents(cfg.data, d, t.sample_bytes_per_domain))
               for d in track(cfg.data.domains, description="sampling domains")}
    empty = [d for d, docs in samples.items() if not docs]
    if empty:
        raise ConfigError(f"data.domains: no documents for {empty} (data.source={cfg.data.source}, "
                          f"data.local_root={cfg.data.local_root})")
    tok = train_bpe((doc for docs in samples.values() for doc in docs), t.vocab_size,
                    SPECIAL_TOKENS + list(ROLE_TOKENS.values()))
    meta = {"vocab_size": tok.get_vocab_size(), "hash": tokenizer_hash(tok), "domains": {}}
    for d, docs in samples.items():
        encs = tok.encode_batch(docs)
        n_bytes, n_tok = sum(len(x.encode()) for x in docs), sum(len(e.ids) for e in encs)
        bad = sum(tok.decode(e.ids, skip_special_tokens=False) != x for e, x in zip(encs, docs))
        meta["domains"][d] = {"documents": len(docs), "bytes": n_bytes, "tokens": n_tok,
                              "bytes_per_token": round(n_bytes / max(1, n_tok), 3), "round_trip_failures": bad}
    return tok, meta


def main(argv: list[str]) -> None:
    from moe_lm.conf_utils import compose

    cfg = compose(argv)
    tok, meta = train_domain_tokenizer(cfg)
    out = Path(cfg.tokenizer.out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer.meta.json").write_text(json.dumps(meta, indent=2))
    print(f"vocab {meta['vocab_size']}, hash {meta['hash']} -> {out}/tokenizer.json\n")
    print("| domain | documents | MB | bytes/token | round-trip failures |\n|---|---:|---:|---:|---:|")
    for d, m in meta["domains"].items():
        print(f"| {d} | {m['documents']:,} | {m['bytes'] / 1e6:.2f} | {m['bytes_per_token']:.2f} | {m['round_trip_failures']} |")


if __name__ == "__main__":
    from moe_lm.cli import run

    run(main, (ConfigError, FileNotFoundError, RuntimeError))
