"""Look inside a checkpoint: `python -m moe_lm.inspect ckpt=PATH prompt="..." [top=5]`.

Prints the architecture and parameter table, then for every prompt token the top next-token predictions
after every layer (logit lens) and the experts the token was routed to in every MoE layer, with their
weights (moe_lm/inference/logit_lens.py). The prompt is taken verbatim (colons, quotes and all), or read from
`prompt_file=PATH` (`prompt_file=-` reads stdin).
"""

from __future__ import annotations

from typing import Sequence

from moe_lm.cli import read_prompt, run_command
from moe_lm.config import InspectConfig


EXAMPLE = 'python -m moe_lm.inspect ckpt=runs/overfit_100_lines/checkpoints/final.ckpt prompt="def add(a, b):" top=3'


def main(cfg: InspectConfig) -> None:
    from moe_lm.errors import CheckpointError
    from moe_lm.io.checkpoint import load_model
    from moe_lm.inference.expert_control import apply_expert_control
    from moe_lm.inference.logit_lens import expert_names, report

    prompt = read_prompt(cfg.prompt, cfg.prompt_file)
    model, tok, run_cfg = load_model(cfg.ckpt)
    if tok is None:
        raise CheckpointError(f"ckpt: {cfg.ckpt} carries no tokenizer")
    steered = apply_expert_control(model, cfg.experts, run_cfg)
    if steered:
        print(steered)
    print(report(model, tok, prompt, cfg.top, expert_names(run_cfg)))


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "inspect", __doc__, text_keys=("prompt", "prompt_file"), argv=argv,
                example=EXAMPLE)


if __name__ == "__main__":
    cli()
