"""Parameter table: `python -m moe_lm.params [overrides, e.g. model=moe_tiny model.n_layers=4 data.seq_len=256]`.

Counts on the meta device (nothing allocated): parameters by part, dense total, total, active per token, and
training FLOPs per token at `data.seq_len` (moe_lm/model/counting.py).
"""

from __future__ import annotations

from typing import Sequence

from moe_lm.cli import run_command
from moe_lm.config import TrainConfig


EXAMPLE = 'python -m moe_lm.params model=moe_small data.seq_len=256'


def main(cfg: TrainConfig) -> None:
    from moe_lm.model.counting import param_table

    print(param_table(cfg.model, cfg.data.seq_len))


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "config", __doc__, argv=argv, help_keys=("model", "data"),
                example=EXAMPLE)


if __name__ == "__main__":
    cli()
