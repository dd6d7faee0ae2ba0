"""Export a checkpoint as a HF transformers model directory: `python -m moe_lm.export ckpt=PATH out=DIR`.

DIR then loads with `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`
(DeepseekV3 for sigmoid routing, DeepseekV2 for softmax; moe_lm/io/hf_dir.py), and moe_lm reads it back
(`ckpt=DIR` in generate/evaluate/inspect, `init_from=hf:DIR` in train). A config the HF class cannot compute
exactly is refused, naming the key; nothing is written unless all of it is.
"""

from __future__ import annotations

from typing import Sequence

from moe_lm.cli import run_command
from moe_lm.config import ExportConfig

EXAMPLE = "python -m moe_lm.export ckpt=runs/overfit_100_lines/checkpoints/final.ckpt out=runs/export/overfit_100_lines"


def main(cfg: ExportConfig) -> None:
    from moe_lm.io.hf_export import export_checkpoint

    files = export_checkpoint(cfg.ckpt, cfg.out, cfg.dtype, cfg.max_shard_mb)
    print(f"wrote {cfg.out}: {', '.join(files)}")


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "export", __doc__, argv=argv, example=EXAMPLE)


if __name__ == "__main__":
    cli()
