"""Train: `python -m moe_lm.train [+experiment=NAME] [overrides]` (Hydra; add -m for sweeps)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from moe_lm.checkpointing import CheckpointError
from moe_lm.config import ConfigError, register_configs
from moe_lm.conf_utils import to_train_config

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> float | None:
    try:
        cfg = to_train_config(dcfg)  # all cross-field checks, before any work
        from moe_lm.run import train

        hc = HydraConfig.get()
        if not cfg.logger.group and hc.mode == RunMode.MULTIRUN:
            cfg.logger.group = Path(hc.sweep.dir).name  # a multirun sweep is one wandb group
        if not cfg.logger.name and hc.mode == RunMode.MULTIRUN:
            cfg.logger.name = hc.job.override_dirname or str(hc.job.num)
        result = train(cfg, cfg.out_dir or hc.runtime.output_dir)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:  # bad input: say what it is, exit cleanly
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return result.get("final_train_loss")


if __name__ == "__main__":
    main()
