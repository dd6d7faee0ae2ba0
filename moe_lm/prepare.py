"""Token shards per domain: `python -m moe_lm.prepare data=domains data.source=hub|local [prepare.out=...]`.

Streams each domain's sources (hub, or local files with the same schemas), tokenises them with
`prepare.tokenizer` and writes `<prepare.out>/<domain>/{train,val,heldout}.bin` and `meta.json` until each
domain's token budget (moe_lm/data/shard_writer.py); heldout.bin holds whole groups (repositories, conversation
trees, documents) kept out of train and val when `prepare.heldout_fraction` > 0. Re-running skips finished domains and resumes a
killed run where its last progress checkpoint left off.
"""

from __future__ import annotations

from typing import Sequence

from moe_lm.cli import run_command
from moe_lm.config import TrainConfig


EXAMPLE = 'python -m moe_lm.prepare data=domains data.source=local paths.data_root=../shared/data'


def main(cfg: TrainConfig) -> None:
    from moe_lm.data.shard_writer import prepare

    metas = prepare(cfg)
    print("| domain | train tokens | val tokens | held-out tokens | documents | skipped | sources short of their share |\n"
          "|---|---:|---:|---:|---:|---:|---|")
    for name, m in metas.items():
        short = ", ".join(f"{s['hub_id'] or s['local_file']} ({s['tokens']:,} of {s['share']:,})"
                          for s in m["sources"] if s.get("exhausted")) or "-"
        print(f"| {name} | {m['tokens']['train']:,} | {m['tokens']['val']:,} | {m['tokens'].get('heldout', 0):,} | "
              f"{sum(m['documents'].values()):,} | {sum(m['skipped'].values()):,} | {short} |")


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "config", __doc__, argv=argv, help_overrides=("data=domains",), help_keys=("data", "prepare", "paths"),
                example=EXAMPLE)


if __name__ == "__main__":
    cli()
