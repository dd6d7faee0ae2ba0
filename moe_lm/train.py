"""Train: `python -m moe_lm.train [+experiment=NAME] [overrides]` (Hydra; add -m for sweeps, --cfg job to see all).

Composes conf/config.yaml, validates it (moe_lm/config/) before any work, and runs moe_lm/training/run.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from moe_lm.cli import check_command_line, conf_dir, debug_requested, plain_warnings, reported_errors, validate
from moe_lm.config import DomainsDataConfig, register_configs

register_configs()
STARTED = time.perf_counter()  # the wall time printed at the end counts from here (imports so far: ~0.4 s)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(dcfg: DictConfig) -> float | None:
    with reported_errors():  # bad input or divergence: one line, no traceback (--debug shows it)
        cfg = validate(dcfg)  # all cross-field checks, before any work
        from moe_lm.training.run import launching_process, train

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:  # a multirun sweep is one wandb group, each run named by its overrides
            cfg.logger.group = cfg.logger.group or Path(hc.sweep.dir).name
            cfg.logger.name = cfg.logger.name or hc.job.override_dirname or str(hc.job.num)
        # held-out text with the lines data: the domains' file formats come from conf/data/domains.yaml
        domains = (validate(hydra.compose("config", ["data=domains"])).data if cfg.eval.heldout_root and
                   not isinstance(cfg.data, DomainsDataConfig) else None)
        result = train(cfg, cfg.out_dir or hc.runtime.output_dir, hc.runtime.choices.get("experiment") or "", domains)
        if launching_process():
            minutes, seconds = divmod(round(time.perf_counter() - STARTED), 60)
            print(f"wall time {minutes} min {seconds:02d} s since the command started")
    return result.get("final_train_loss")


if __name__ == "__main__":
    if not debug_requested(sys.argv):
        plain_warnings()
    check_command_line(sys.argv[1:])  # bad input: one line and exit 2 before Hydra starts
    main()
