"""Train the multi-domain tokenizer: `python -m moe_lm.tokenizer data=domains data.source=local|hub [overrides]`.

A byte-level BPE with `<|endoftext|>` and the chat role tokens, trained on a domain-balanced sample
(moe_lm/data/bpe.py). Writes `tokenizer.json` and `tokenizer.meta.json` under `tokenizer.out` and
prints bytes per token per domain.
"""

from __future__ import annotations

from typing import Sequence

from pathlib import Path

from moe_lm.cli import run_command
from moe_lm.config import ConfigError, DomainsDataConfig, TrainConfig


EXAMPLE = ("python -m moe_lm.tokenizer data=domains data.source=local paths.data_root=../shared/data "
           "tokenizer.vocab_size=8192")


def main(cfg: TrainConfig) -> None:
    from moe_lm.data.bpe import save_tokenizer, train_domain_tokenizer

    if not isinstance(cfg.data, DomainsDataConfig):
        raise ConfigError("data: the tokenizer is trained on the multi-domain data group (data=domains)")
    from moe_lm.data.shard_writer import is_heldout

    fraction = cfg.prepare.heldout_fraction  # the groups prepare keeps apart are not in the tokenizer's sample
    tok, meta = train_domain_tokenizer(cfg.data, cfg.tokenizer, lambda d, key: is_heldout(d, key, cfg.seed, fraction))
    path = Path(cfg.tokenizer.out) / "tokenizer.json"
    save_tokenizer(tok, meta, path)
    print(f"vocab {meta['vocab_size']}, hash {meta['hash']} -> {path}\n")
    print("| domain | documents | MB | bytes/token | round-trip failures |\n|---|---:|---:|---:|---:|")
    for d, m in meta["domains"].items():
        print(f"| {d} | {m['documents']:,} | {m['bytes'] / 1e6:.2f} | {m['bytes_per_token']:.2f} | {m['round_trip_failures']} |")


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "config", __doc__, argv=argv, help_overrides=("data=domains",), help_keys=("data", "tokenizer", "paths"),
                example=EXAMPLE)


if __name__ == "__main__":
    cli()
