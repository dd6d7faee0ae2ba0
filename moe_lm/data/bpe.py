"""Byte-level BPE tokenizers trained with HF `tokenizers`: the overfit demo's (on its own file) and the
multi-domain one (`python -m moe_lm.tokenizer`).

Byte-level pre-tokenisation without an added prefix space makes decode(encode(x)) == x exact
for any UTF-8 text. `<|endoftext|>` is id 0 and separates documents. The multi-domain tokenizer also has
the chat role tokens and is trained on a domain-balanced sample (`tokenizer.sample_bytes_per_domain` of
formatted text from each domain, split across its sources by weight); its meta records the hash, the
vocab size, bytes per token per domain and the round-trip result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moe_lm.config import ConfigError, DomainsDataConfig, TokenizerConfig
from moe_lm.data.files import write_json_atomic, write_text_atomic
from moe_lm.data.formatters import ROLE_TOKENS, Skip, format_records, render_chat
from moe_lm.data.sources import iter_source

EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT]


def has_chat_tokens(tok: Tokenizer) -> bool:
    return all(tok.token_to_id(t) is not None for t in ROLE_TOKENS.values())


def chat_text(messages: list[tuple[str, str]], tok: Tokenizer, add_generation_prompt: bool = True) -> str:
    """The chat template (role tokens, or plain text when the tokenizer has none), ending with the
    assistant's turn marker when asked."""
    roles = has_chat_tokens(tok)
    prompt = (ROLE_TOKENS["assistant"] if roles else "Assistant:") if add_generation_prompt else ""
    return render_chat(messages, roles) + prompt


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str] | None = None,
              min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`. The result may be smaller than `vocab_size` on little text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(special_tokens or SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path, key: str = "prepare.tokenizer") -> Tokenizer:
    """A tokenizer.json as moe_lm uses it: encode() adds no token (callers prepend <|endoftext|> themselves), also
    for a tokenizer from another model directory whose post-processor would add a BOS (init_from=hf:DIR).
    An empty, damaged or foreign file is named (`key`: the setting that pointed at it)."""
    import json

    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(spec, dict) or "model" not in spec:
            raise ValueError("no tokenizer model in it")
        spec["post_processor"] = None
        tok = Tokenizer.from_str(json.dumps(spec))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - JSON, UTF-8 or tokenizers' own exception type
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: {path} is not a tokenizer.json written by tokenizers ({why}); train one with "
                          f"python -m moe_lm.tokenizer data=domains") from e
    if tok.get_vocab_size() == 0:
        raise ConfigError(f"{key}: {path} holds a tokenizer with an empty vocabulary")
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def eot_id(tok: Tokenizer) -> int:
    idx = tok.token_to_id(EOT)
    if idx is None:
        raise ConfigError(f"tokenizer: it has no {EOT} token")
    return idx


def domain_documents(data: DomainsDataConfig, domain: str, max_bytes: int,
                     held_out: Optional[Callable[[str, str], bool]] = None) -> Iterator[str]:
    """Formatted documents of one domain, each source contributing up to its weight's share of max_bytes; the
    documents whose group `held_out(domain, key)` keeps apart are left out."""
    sources = data.domains[domain].sources
    total_w = sum(s.weight for s in sources)
    for src in sources:
        budget = max_bytes * src.weight / total_w
        used = 0
        rows = (r for r in iter_source(src, data) if not isinstance(r, Skip))
        for key, doc in format_records(src.formatter, rows, keyed=True):
            if isinstance(doc, Skip) or (held_out is not None and held_out(domain, key)):
                continue
            if used >= budget:
                break
            used += len(doc.encode())
            yield doc


def train_domain_tokenizer(data: DomainsDataConfig, cfg: TokenizerConfig,
                           held_out: Optional[Callable[[str, str], bool]] = None) -> tuple[Tokenizer, dict[str, Any]]:
    """The multi-domain BPE and its meta (hash, vocab size, bytes/token and round-trip failures per domain),
    trained without the documents of held-out groups."""
    from rich.progress import track

    samples = {d: list(domain_documents(data, d, cfg.sample_bytes_per_domain, held_out))
               for d in track(data.domains, description="sampling domains")}
    empty = [d for d, docs in samples.items() if not docs]
    if empty:
        raise ConfigError(f"data.domains: no documents for {empty} (data.source={data.source}, "
                          f"data.local_root={data.local_root})")
    tok = train_bpe((doc for docs in samples.values() for doc in docs), cfg.vocab_size,
                    SPECIAL_TOKENS + list(ROLE_TOKENS.values()))
    meta: dict[str, Any] = {"vocab_size": tok.get_vocab_size(), "hash": tokenizer_hash(tok), "domains": {}}
    for d, docs in samples.items():
        encs = tok.encode_batch(docs)
        n_bytes, n_tok = sum(len(x.encode()) for x in docs), sum(len(e.ids) for e in encs)
        bad = sum(tok.decode(e.ids, skip_special_tokens=False) != x for e, x in zip(encs, docs))
        meta["domains"][d] = {"documents": len(docs), "bytes": n_bytes, "tokens": n_tok,
                              "bytes_per_token": round(n_bytes / max(1, n_tok), 3), "round_trip_failures": bad}
    return tok, meta


def save_tokenizer(tok: Tokenizer, meta: dict[str, Any], path: Path) -> None:
    """`tokenizer.json` at path and `tokenizer.meta.json` beside it, each written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, tok.to_str())
    write_json_atomic(path.parent / "tokenizer.meta.json", meta)
