"""Compose and validate configs outside `@hydra.main` (CLIs other than train, tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from moe_lm.config import TrainConfig, register_configs

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """DictConfig -> validated dataclasses (runs every `__post_init__` cross-field check)."""
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, TrainConfig)
    return obj


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> TrainConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return to_train_config(cfg)
