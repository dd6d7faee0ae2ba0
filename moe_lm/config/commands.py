"""Each command's primary schema (`train`, `generate`, `evaluate`, ...) and their registration with Hydra."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from moe_lm.config.base import ConfigError, _check, _one_of, resources_dir
from moe_lm.config.data import DataConfig, DomainsDataConfig, LinesDataConfig, PrepareConfig, TokenizerConfig
from moe_lm.config.model import ModelConfig
from moe_lm.config.training import (CheckpointConfig, EvalConfig, GrowConfig, LoggerConfig, OptimizerConfig,
                                    PathsConfig, PrecisionConfig, RoutingConfig, SchedulerConfig, StrategyConfig,
                                    TrainerConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # LinesDataConfig or DomainsDataConfig: the YAML of the chosen `data` group names its schema
    data: Any = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    grow: GrowConfig = field(default_factory=GrowConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 1337
    out_dir: str = ""
    # hf:DIR = start from an HF DeepseekV3/V2 directory's weights (and its architecture); ckpt:PATH = from a moe_lm
    # checkpoint's weights, a dense one upcycled into this run's MoE (moe_lm/training/upcycle.py)
    init_from: str = ""

    def __post_init__(self) -> None:
        _check(self.init_from == "" or (self.init_from.startswith(("hf:", "ckpt:"))
                                        and len(self.init_from.split(":", 1)[1]) > 0), "init_from",
               f"{self.init_from!r}: give hf:DIR (a directory written by moe_lm.export, or a DeepseekV3/V2 one) or "
               f"ckpt:PATH (a moe_lm checkpoint; a dense one is upcycled)")
        _check(isinstance(self.data, DataConfig), "data",
               "choose a data group, e.g. data=overfit_100_lines or data=domains")
        if self.strategy.name != "single":
            _check(isinstance(self.data, DomainsDataConfig), "strategy",
                   f"{self.strategy.name} needs the multi-domain data (data=domains); the lines data runs in one process")
            world = self.strategy.world_size
            _check(world is None or self.data.batch_size % world == 0, "data.batch_size",
                   f"{self.data.batch_size} is the global batch; it must divide evenly over {world} processes")
        _check(self.data.seq_len <= self.model.max_seq_len, "data.seq_len",
               f"{self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        _check(not (self.trainer.compile and self.trainer.compile_mode in ("reduce-overhead", "max-autotune")
                    and self.model.moe_impl == "loop"), "trainer.compile_mode",
               f"{self.trainer.compile_mode} replays the step as a CUDA graph, which cannot hold model.moe_impl=loop's "
               f"host reads; use model.moe_impl=capacity, grouped_mm or bmm")
        r = self.routing
        if r.warm_steps_needed or r.router_init != "random":
            key = ("routing.warm_routing" if r.warm_routing != "learned" else
                   "routing.warm_balance" if r.warm_balance != "batch" else "routing.router_init")
            _check(isinstance(self.data, DomainsDataConfig) and (self.data.round_robin_steps > 0 or
                                                                 not r.warm_steps_needed), key,
                   f"{r.arm} needs multi-domain data (data=domains) and a warm start (data.round_robin_steps > 0)")
            _check(self.model.first_k_dense < self.model.n_layers, key,
                   f"{r.arm} needs MoE layers (model.first_k_dense < model.n_layers)")
        if r.warm_routing in ("forced", "forced_guided") or r.warm_balance == "window" or r.router_init == "domain_mean":
            _check(self.model.router_type == "token_choice", "model.router_type",
                   f"routing {r.arm} needs token_choice routing, got {self.model.router_type}")
        for name, d in getattr(self.data, "domains", {}).items():
            _check(d.expert is None or 0 <= d.expert < self.model.n_routed_experts, f"data.domains.{name}.expert",
                   f"{d.expert} is not a routed expert of a model with {self.model.n_routed_experts}")
        for name in r.forced_domains:
            _check(name in getattr(self.data, "domains", {}), "routing.forced_domains",
                   f"{name!r} is not a domain of data.domains")
        if self.grow.domain:
            self._check_grow()

    def _check_grow(self) -> None:
        g, E = self.grow, self.model.n_routed_experts
        _check(self.init_from.startswith("ckpt:"), "grow.domain",
               "grows a trained MoE: give its checkpoint as init_from=ckpt:PATH")
        domains = getattr(self.data, "domains", {})
        _check(g.domain in domains, "grow.domain", f"{g.domain!r} is not a domain of data.domains "
                                                   f"({', '.join(domains) or 'no multi-domain data: data=domains'})")
        _check(domains[g.domain].expert == E - 1, f"data.domains.{g.domain}.expert",
               f"must be the new routed expert {E - 1} (model.n_routed_experts={E}, one more than the checkpoint's)")


@dataclass
class SamplingConfig:
    """Decoding settings (moe_lm/inference/logits_processors.py)."""

    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # in (0, 1]; 1 = off
    min_p: float = 0.0  # in [0, 1); relative to the top token's probability
    epsilon: float = 0.0  # drop tokens with probability below epsilon
    repetition_penalty: float = 1.0  # > 0; 1 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0  # 0 = off
    stop: List[str] = field(default_factory=list)
    seed: Optional[int] = None
    # torch.compile the one-token step over a fixed-shape cache (a CUDA graph on a GPU); the first call compiles
    compile: bool = False

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {msg}, got {getattr(self, name)!r}")

        check(self.max_new_tokens > 0, "max_new_tokens", "must be > 0")
        check(math.isfinite(self.temperature) and self.temperature >= 0, "temperature",
              "must be a finite number >= 0 (0 = greedy)")
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(0 <= self.min_p < 1, "min_p", "must be in [0, 1)")
        check(0 <= self.epsilon < 1, "epsilon", "must be in [0, 1)")
        check(self.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 = off)")
        check(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", "must be >= 0 (0 = off)")


@dataclass
class ExpertControlConfig:
    """`experts.*` of generate, inspect and evaluate (moe_lm/inference/expert_control.py): routed experts named by
    their domain in the checkpoint's data config (or by number) that are never chosen, or always hold a slot."""

    drop: List[str] = field(default_factory=list)  # never chosen; the router renormalises over the rest
    force: str = ""  # always one of each token's top-k (the forced warm start's rule)

    def __post_init__(self) -> None:
        self.drop = [str(d) for d in self.drop]
        self.force = str(self.force) if self.force is not None else ""
        _check(len(set(self.drop)) == len(self.drop), "experts.drop", f"names an expert twice: {self.drop}")
        _check(not self.force or self.force not in self.drop, "experts.force",
               f"{self.force} is also in experts.drop")

    @property
    def active(self) -> bool:
        return bool(self.drop or self.force)


@dataclass
class GenerateConfig(SamplingConfig):
    """`python -m moe_lm.generate`: conf/generate.yaml."""

    ckpt: str = ""
    prompt: str = ""
    prompt_file: str = ""  # the prompt is this file's text ('-' = stdin), instead of prompt=
    chat: bool = False
    echo: bool = True  # print the prompt before its continuation
    device: str = "cpu"
    experts: ExpertControlConfig = field(default_factory=ExpertControlConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(bool(self.ckpt), "ckpt", "required, e.g. ckpt=runs/overfit_100_lines/checkpoints/final.ckpt")
        _check(not (self.prompt and self.prompt_file), "prompt_file", "give prompt= or prompt_file=, not both")


@dataclass
class InspectConfig:
    """`python -m moe_lm.inspect`: conf/inspect.yaml."""

    ckpt: str = ""
    prompt: str = ""
    prompt_file: str = ""  # the prompt is this file's text ('-' = stdin), instead of prompt=
    top: int = 5
    experts: ExpertControlConfig = field(default_factory=ExpertControlConfig)

    def __post_init__(self) -> None:
        _check(bool(self.ckpt), "ckpt", "required, e.g. ckpt=runs/overfit_100_lines/checkpoints/final.ckpt")
        _check(not (self.prompt and self.prompt_file), "prompt_file", "give prompt= or prompt_file=, not both")
        _check(self.top > 0, "top", "must be > 0")


@dataclass
class ExportConfig:
    """`python -m moe_lm.export`: conf/export.yaml (moe_lm/io/hf_dir.py)."""

    ckpt: str = ""
    out: str = ""
    dtype: str = "float32"  # float32 | bfloat16 | float16: the dtype of the exported weights
    max_shard_mb: int = 2000  # weights above this are split into model-0000i-of-0000n.safetensors + an index
    # refused when set: the export writes the routing the model was trained with (docs/export.md)
    experts: ExpertControlConfig = field(default_factory=ExpertControlConfig)

    def __post_init__(self) -> None:
        _check(not self.experts.active, "experts.drop" if self.experts.drop else "experts.force",
               "the export writes the routing the model was trained with; steering the experts is a setting of "
               "generate, inspect and evaluate (of moe_lm, or of the exported directory read back with ckpt=DIR)")
        _check(bool(self.ckpt), "ckpt", "required, e.g. ckpt=runs/overfit_100_lines/checkpoints/final.ckpt")
        _check(bool(self.out), "out", "required: the directory to write, e.g. out=runs/export/moe_100m")
        _one_of(self.dtype, "dtype", ("float32", "bfloat16", "float16"))
        _check(self.max_shard_mb > 0, "max_shard_mb", "must be > 0")


@dataclass
class ReportConfig:
    """`python -m moe_lm.report`: conf/report.yaml."""

    dir: str = ""  # a sweep directory holding one result.json per finished run

    def __post_init__(self) -> None:
        _check(bool(self.dir), "dir", "required: the sweep directory, e.g. dir=multirun/2026-01-01/12-00-00")


@dataclass
class PlanConfig:
    """`python -m moe_lm.plan`: conf/plan.yaml. What a compute budget buys (moe_lm/eval/compute_plan.py)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the family the size ladder scales
    gpu: str = "T4"  # a device of moe_lm.model.counting.PEAK_FLOPS, or cpu
    hours: float = 10.0
    mfu: Optional[float] = None  # null: measured on the device, or a range derived from the measured ones
    flops: Optional[float] = None  # a budget in FLOPs instead of gpu x hours x mfu
    flops_per_s: Optional[float] = None  # the device's peak, instead of the table's
    tokens_per_param: float = 20.0  # compute-optimal tokens per active parameter (Chinchilla: ~20)
    batch_size: int = 16
    seq_len: int = 1024
    gradient_checkpointing: bool = False
    recipe: str = ""  # a conf/experiment/recipe_*.yaml: print its tokens, steps, memory and hours instead

    def __post_init__(self) -> None:
        from_flops = self.flops is not None
        _check(not from_flops or self.flops > 0, "flops", "must be > 0")
        _check(from_flops or self.hours > 0, "hours", "must be > 0")
        _check(self.mfu is None or 0 < self.mfu <= 1, "mfu", "must be in (0, 1]")
        _check(self.tokens_per_param > 0, "tokens_per_param", "must be > 0")
        _check(self.batch_size > 0 and self.seq_len > 0, "batch_size", "batch_size and seq_len must be > 0")


@dataclass
class ScalingConfig:
    """`python -m moe_lm.scaling`: conf/scaling.yaml. A scaling law fitted to a sweep (moe_lm/eval/scaling_law.py)."""

    dir: str = ""  # a sweep directory holding one result.json per finished run
    params: str = "active"  # N = active parameters per token, or total
    loss: str = "val/loss"  # the result.json key fitted
    budget: Optional[float] = None  # FLOPs: print the law's compute-optimal N and D for it
    predict: List[float] = field(default_factory=list)  # N (with D = tokens_per_param * N) to predict the loss of
    tokens_per_param: Optional[float] = None  # null: the sweep's own (median) tokens per parameter
    bootstrap: int = 200  # resamples for the exponents' 95% intervals
    seed: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.dir), "dir", "required: the sweep directory, e.g. dir=runs/scaling_ladder")
        _one_of(self.params, "params", ("active", "total"))
        _check(self.bootstrap >= 0, "bootstrap", "must be >= 0")


@dataclass
class EvalDataConfig:
    """What `moe_lm.evaluate` reads."""

    local_root: str = ""  # task=lm/knockout: a directory laid out like paths.data_root (conf/data/domains.yaml's files)
    shards: str = ""  # task=lm/knockout: instead of local_root, the val split of prepared shards (<dir>/<domain>/val.bin)
    domains: List[str] = field(default_factory=list)  # task=lm: empty = every domain with a file there
    max_documents: int = 0  # task=lm: per domain, 0 = all
    max_tokens: int = 0  # task=lm/knockout with data.shards: the first N tokens per domain, 0 = all
    # with data.shards: val (documents drawn among the training documents) | heldout (whole repositories,
    # conversation trees or documents kept out of training: prepare.heldout_fraction)
    split: str = "val"
    file: str = ""  # task=gsm8k: the questions (gsm8k JSONL: question, answer)
    shots_file: str = ""  # task=gsm8k: the k-shot examples, from another split than `file`


@dataclass
class EvaluateConfig:
    """`python -m moe_lm.evaluate`: conf/evaluate.yaml (moe_lm/eval/heldout.py, moe_lm/eval/gsm8k.py)."""

    ckpt: str = ""
    # lm: loss, perplexity, bits per byte, routing and each expert's over-represented tokens per domain |
    # knockout: each domain's loss with each routed expert removed from routing | gsm8k: exact match
    task: str = "lm"
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    context: int = 0  # window length, 0 = the model's max_seq_len
    stride: int = 0  # tokens between window starts, 0 = context / 2 (every token keeps >= half a window of context)
    batch_size: int = 8
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    device: str = "cpu"
    shots: int = 8  # gsm8k: examples in the prompt
    max_new_tokens: int = 256  # gsm8k
    limit: int = 0  # gsm8k: questions, 0 = all
    vocab_top: int = 10  # task=lm: tokens listed per expert (highest lift), 0 = no vocabulary view
    vocab_min_count: int = 20  # task=lm: a token's slots on an expert needed to be listed for it
    out: str = ""  # where eval.json & co go; empty = <run dir>/eval beside the checkpoint's checkpoints/
    experts: ExpertControlConfig = field(default_factory=ExpertControlConfig)

    def __post_init__(self) -> None:
        _check(bool(self.ckpt), "ckpt", "required, e.g. ckpt=runs/overfit_100_lines/checkpoints/final.ckpt")
        _one_of(self.task, "task", ("lm", "knockout", "gsm8k"))
        _check(self.vocab_top >= 0 and self.vocab_min_count >= 1, "vocab_top", "vocab_top >= 0, vocab_min_count >= 1")
        _one_of(self.precision, "precision", ("fp32", "bf16"))
        _check(self.context >= 0 and self.stride >= 0, "stride", "context and stride must be >= 0")
        _check(not self.context or not self.stride or self.stride <= self.context, "stride",
               f"must be <= context ({self.context})")
        _check(self.batch_size > 0, "batch_size", "must be > 0")
        _check(self.shots >= 0 and self.max_new_tokens > 0 and self.limit >= 0, "shots",
               "shots and limit must be >= 0, max_new_tokens > 0")
        _check(self.data.max_documents >= 0 and self.data.max_tokens >= 0, "data.max_documents",
               "data.max_documents and data.max_tokens must be >= 0")
        _check(self.task == "gsm8k" or bool(self.data.local_root) != bool(self.data.shards), "data.local_root",
               f"task={self.task} reads one of data.local_root (a directory laid out like paths.data_root) or "
               f"data.shards (prepared shards, their val split)")
        _one_of(self.data.split, "data.split", ("val", "heldout"))
        _check(self.data.split == "val" or bool(self.data.shards), "data.split",
               "heldout is a split of prepared shards: set data.shards")
        _check(self.task != "gsm8k" or bool(self.data.file), "data.file", "required for task=gsm8k: a gsm8k JSONL")
        _check(self.task != "gsm8k" or not self.shots or bool(self.data.shots_file), "data.shots_file",
               f"required for {self.shots}-shot prompting (or shots=0)")


# The primary config of each command, and the schemas the `data` group's YAMLs name in their defaults.
SCHEMAS = {"train_schema": TrainConfig, "generate_schema": GenerateConfig, "inspect_schema": InspectConfig,
           "report_schema": ReportConfig, "plan_schema": PlanConfig, "scaling_schema": ScalingConfig,
           "evaluate_schema": EvaluateConfig, "export_schema": ExportConfig}
DATA_SCHEMAS = {"lines_schema": LinesDataConfig, "domains_schema": DomainsDataConfig}


def register_configs() -> None:
    """Register the schemas so YAML files are validated against them at compose time."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
    for name, node in DATA_SCHEMAS.items():
        cs.store(group="data", name=name, node=node)
    if not OmegaConf.has_resolver("moe_lm.resources"):
        OmegaConf.register_new_resolver("moe_lm.resources", lambda: str(resources_dir()))
