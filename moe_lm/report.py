"""Summarise a sweep: `python -m moe_lm.report dir=SWEEP_DIR` -> SWEEP_DIR/report.md and its figures.

Reads every `result.json` below SWEEP_DIR (one per finished run). A depth x seq_len sweep: a table (params,
active params, tokens, wall time, final train and val loss per run) and val loss against depth
(moe_lm/eval/sweep_report.py). The specialisation ablation: per arm, mean +/- half range over seeds of the val loss
per domain, the specialisation scores and the step time, with val loss per domain and own-expert share over
training as figures (moe_lm/eval/ablation.py). The architecture ablation: per switch, the val loss against the
baseline's, per domain, parameters and step time (moe_lm/eval/arch_ablation.py).
"""

from __future__ import annotations

from typing import Sequence

from pathlib import Path

from moe_lm.cli import run_command
from moe_lm.config import ReportConfig


EXAMPLE = 'python -m moe_lm.report dir=runs/specialisation/sweep'


def main(cfg: ReportConfig) -> None:
    from moe_lm.eval.sweep_report import write_report

    sweep = Path(cfg.dir)
    md, figures = write_report(sweep)
    print(md + f"\n\nwrote {sweep / 'report.md'} and " + ", ".join(str(f) for f in figures))


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "report", __doc__, argv=argv,
                example=EXAMPLE)


if __name__ == "__main__":
    cli()
