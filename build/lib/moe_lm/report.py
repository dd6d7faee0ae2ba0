"""Summarise a sweep: `python -m moe_lm.report dir=SWEEP_DIR` -> SWEEP_DIR/report.md and SWEEP_DIR/val_loss.png.

Reads every `result.json` below SWEEP_DIR (one per finished run) and writes a markdown table (params, active
params, tokens, wall time, final train and val loss per run) and a plot of val loss against depth, one line
per seq_len (moe_lm/eval/report.py).
"""

from __future__ import annotations

from pathlib import Path

from moe_lm.cli import run_command
from moe_lm.config import ReportConfig


def main(cfg: ReportConfig) -> None:
    from moe_lm.eval.report import write_report

    sweep = Path(cfg.dir)
    md = write_report(sweep)
    print(md + f"\n\nwrote {sweep / 'report.md'} and {sweep / 'val_loss.png'}")


if __name__ == "__main__":
    run_command(main, "report", __doc__)
