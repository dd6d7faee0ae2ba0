"""Typed config schemas, one dataclass per Hydra config group.

The schemas are registered in Hydra's ConfigStore (`register_configs`): each command's primary YAML
(`conf/config.yaml`, `conf/generate.yaml`, ...) and each `data` group YAML names its schema in its
defaults list, so a YAML key that does not exist in a schema, or a value of the wrong type, fails at
compose time. Cross-field checks live in `__post_init__` and run when `moe_lm.cli.compose` converts the
composed config with `OmegaConf.to_object`, i.e. before any data is read or any weight is allocated.
Every error names the offending key (`model.n_heads`, `data.seq_len`, ...). The package imports nothing
of moe_lm outside it.

One module per concern: `model` (the architecture), `data` (data, tokenizer, prepare), `training` (routing,
optimizer, scheduler, precision, trainer, strategy, logger, checkpoint, eval, paths) and `commands` (each
command's primary schema and the Hydra registration); `base` holds `ConfigError` and the checks.
"""

from moe_lm.config.base import ConfigError, resources_dir
from moe_lm.config.commands import (DATA_SCHEMAS, SCHEMAS, EvalDataConfig, EvaluateConfig, ExpertControlConfig,
                                    ExportConfig, GenerateConfig,
                                    InspectConfig, PlanConfig, ReportConfig, SamplingConfig, ScalingConfig, TrainConfig,
                                    register_configs)
from moe_lm.config.data import (DataConfig, DomainConfig, DomainsDataConfig, LinesDataConfig, PrepareConfig, SourceConfig,
                                TokenizerConfig)
from moe_lm.config.model import ACTIVATIONS, ARCHITECTURE_SWITCHES, ModelConfig
from moe_lm.config.training import (CheckpointConfig, EvalConfig, LoggerConfig, OptimizerConfig, PathsConfig,
                                    PrecisionConfig, RoutingConfig, SchedulerConfig, StrategyConfig, TrainerConfig)

__all__ = [
    "ACTIVATIONS", "ARCHITECTURE_SWITCHES", "DATA_SCHEMAS", "SCHEMAS", "CheckpointConfig", "ConfigError", "DataConfig",
    "DomainConfig", "DomainsDataConfig", "EvalConfig", "EvalDataConfig", "EvaluateConfig", "ExpertControlConfig", "ExportConfig",
    "GenerateConfig", "InspectConfig", "LinesDataConfig", "LoggerConfig", "ModelConfig", "OptimizerConfig",
    "PathsConfig", "PlanConfig", "PrecisionConfig", "PrepareConfig", "ReportConfig", "RoutingConfig", "SamplingConfig",
    "ScalingConfig", "SchedulerConfig", "SourceConfig", "StrategyConfig", "TokenizerConfig", "TrainConfig",
    "TrainerConfig", "register_configs", "resources_dir",
]
