"""The two data pipelines, chosen by the type of `cfg.data`: tokenizer and LightningDataModule of a run.

- `LinesDataConfig` (the overfit demo): a byte-level BPE trained on the text file itself at the start of the
  run (saved as `<out>/tokenizer.json`), then `TextLinesDataModule`.
- `DomainsDataConfig`: the multi-domain tokenizer at `prepare.tokenizer` (trained first when missing) and the
  shards under `prepare.out` (prepared first where missing: prepare is idempotent), then `DomainDataModule`
  (with no round-robin phase under `routing.warm_batches=mixed`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
from tokenizers import Tokenizer

from moe_lm.config import ConfigError, DomainsDataConfig, LinesDataConfig, TrainConfig


def check_vocab(tok: Tokenizer, cfg: TrainConfig) -> Tokenizer:
    if tok.get_vocab_size() > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tok.get_vocab_size()} tokens")
    return tok


def lines_pipeline(cfg: TrainConfig, out_dir: Path, given: Tokenizer | None) -> tuple[Tokenizer, L.LightningDataModule]:
    from moe_lm.data.text_lines import TextLinesDataModule, read_lines
    from moe_lm.data.bpe import train_bpe

    tok = check_vocab(given or train_bpe(read_lines(cfg.data.path), cfg.data.tokenizer_vocab_size), cfg)
    tok.save(str(out_dir / "tokenizer.json"))
    return tok, TextLinesDataModule(cfg.data, tok, cfg.seed, cfg.trainer.accumulate_grad_batches)


def domains_pipeline(cfg: TrainConfig, out_dir: Path, given: Tokenizer | None) -> tuple[Tokenizer, L.LightningDataModule]:
    from moe_lm.data.shard_writer import prepare
    from moe_lm.data.shards import DomainDataModule
    from moe_lm.data.bpe import load_tokenizer, save_tokenizer, tokenizer_hash, train_domain_tokenizer

    tok_path = Path(cfg.prepare.tokenizer)
    if not tok_path.is_file():
        if given is not None:
            raise ConfigError(f"prepare.tokenizer: {tok_path} does not exist; with init_from, tokenise the data with "
                              f"the model's tokenizer: prepare.tokenizer={cfg.init_from.removeprefix('hf:')}/tokenizer.json")
        save_tokenizer(*train_domain_tokenizer(cfg.data, cfg.tokenizer), tok_path)
    tok = check_vocab(load_tokenizer(tok_path), cfg)
    if given is not None and tokenizer_hash(tok) != tokenizer_hash(given):
        raise ConfigError(f"prepare.tokenizer: {tok_path} is not the tokenizer of init_from={cfg.init_from}; use its "
                          f"tokenizer.json (and shards prepared with it)")
    if not all_prepared(cfg, tokenizer_hash(tok)):  # read-only when every domain is there: runs can share shards
        prepare(cfg)  # idempotent: finished domains are skipped
    mixed = cfg.routing.warm_batches == "mixed"  # the warm start's batches drawn as after it
    data = dataclasses.replace(cfg.data, round_robin_steps=0) if mixed else cfg.data
    return tok, DomainDataModule(data, cfg.seed, cfg.trainer.accumulate_grad_batches, cfg.model.vocab_size)


def all_prepared(cfg: TrainConfig, thash: str) -> bool:
    """Every domain has a manifest of this tokenizer and budget under data.shards (its files are checked later)."""
    from moe_lm.data.manifest import read_meta

    for name, domain in cfg.data.domains.items():
        path = Path(cfg.data.shards) / name / "meta.json"
        if not path.is_file():
            return False
        meta = read_meta(path)
        if meta.get("tokenizer_hash") != thash:
            raise ConfigError(f"prepare.tokenizer: {path.parent} was tokenised with tokenizer "
                              f"{meta.get('tokenizer_hash')}, prepare.tokenizer is {thash}; use the tokenizer the "
                              f"shards were made with, or prepare them again")
        if meta.get("token_budget") != domain.token_budget:
            return False  # prepare names the conflict
    return True


def build_data(cfg: TrainConfig, out_dir: Path, tok: Tokenizer | None = None) -> tuple[Tokenizer, L.LightningDataModule]:
    """`tok`: the tokenizer the model comes with (init_from); the data must use it."""
    if isinstance(cfg.data, LinesDataConfig):
        return lines_pipeline(cfg, out_dir, tok)
    if isinstance(cfg.data, DomainsDataConfig):
        return domains_pipeline(cfg, out_dir, tok)
    raise ConfigError(f"data: unknown data config {type(cfg.data).__name__}")
