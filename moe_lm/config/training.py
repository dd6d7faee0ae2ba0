"""The training loop's groups: routing (warm starts), optimizer, scheduler, precision, trainer, strategy,
logger, checkpoint, eval and paths."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from moe_lm.config.base import _check, _one_of


@dataclass
class RoutingConfig:
    """`routing.*`: how the routed experts are warm-started on their domains (moe_lm/training/guidance.py,
    moe_lm/training/router_init.py). Four independent switches.

    The warm start lasts `data.round_robin_steps` optimizer steps (multi-domain data only); after it, mixed
    sampling with the usual balance terms takes over, whatever the switches say.
    - warm_batches: round_robin (each batch from one domain, cycling the domains) | mixed (each sample's domain
      drawn from the mixture, as after the warm start);
    - warm_routing: learned (the router alone) | guided (plus a supervision term, the cross-entropy between each
      token's router distribution and its domain's expert, weighted by `guided_coef` annealed to 0 by the end
      of the warm start) | forced (each expert-domain token's own expert always holds one of its top-k slots;
      the other slots are chosen by the router) | forced_guided (forced, plus the guided supervision term);
    - warm_balance: batch (the aux loss and the aux-free bias see each step's batch) | window (both see the
      expert loads of the last `n` steps, n = the domains of the round-robin cycle, so a one-domain batch is
      not pushed off its expert) | off (no aux loss and no bias update during the warm start);
    - router_init: random | domain_mean (each routed expert's router row starts as the mean router input of
      its domain's tokens, less the mean over all domains, scaled to a random row's norm; computed from
      `router_init_batches` batches per domain before the first step of a fresh run, after init_from).
    """

    warm_batches: str = "round_robin"  # round_robin | mixed
    warm_routing: str = "learned"  # learned | guided | forced | forced_guided
    warm_balance: str = "batch"  # batch | window | off
    router_init: str = "random"  # random | domain_mean
    router_init_batches: int = 4  # router_init=domain_mean: batches per domain
    guided_coef: float = 0.1  # weight of the router supervision term at step 0 (guided, forced_guided)
    guided_anneal: str = "linear"  # linear | cosine | constant (then 0 after the warm start)
    # warm_routing=forced: only these domains' tokens are forced to their expert (empty: every expert domain)
    forced_domains: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _one_of(self.warm_batches, "routing.warm_batches", ("round_robin", "mixed"))
        _one_of(self.warm_routing, "routing.warm_routing", ("learned", "guided", "forced", "forced_guided"))
        _one_of(self.warm_balance, "routing.warm_balance", ("batch", "window", "off"))
        _one_of(self.router_init, "routing.router_init", ("random", "domain_mean"))
        _one_of(self.guided_anneal, "routing.guided_anneal", ("linear", "cosine", "constant"))
        _check(math.isfinite(self.guided_coef) and self.guided_coef >= 0, "routing.guided_coef", "must be >= 0")
        _check(self.router_init_batches > 0, "routing.router_init_batches", "must be > 0")

    @property
    def arm(self) -> str:
        """A short name of the switches: `none` (mixed, learned, batch, random), else the settings that differ
        from mixed/learned/batch/random, e.g. `round_robin+guided`, `forced`, `window+domain_mean`."""
        parts = [self.warm_batches if self.warm_batches != "mixed" else "",
                 self.warm_routing if self.warm_routing != "learned" else "",
                 self.warm_balance if self.warm_balance != "batch" else "",
                 self.router_init if self.router_init != "random" else ""]
        return "+".join(p for p in parts if p) or "none"

    @property
    def warm_steps_needed(self) -> bool:
        """Whether a switch acts during the warm start (so data.round_robin_steps must be > 0)."""
        return self.warm_routing != "learned" or self.warm_balance != "batch"


@dataclass
class GrowConfig:
    """`grow.*` with init_from=ckpt:PATH: a trained MoE gets one more routed expert, for a domain it never saw
    (moe_lm/training/grow.py; conf/experiment/add_domain_expert.yaml)."""

    domain: str = ""  # the new domain of data.domains; its expert must be the new one, model.n_routed_experts - 1
    init: str = "shared"  # the new expert starts as: shared (the shared expert's first hidden units) | most_used
    # (a copy of the routed expert the new domain's tokens use most, per layer)
    noise: float = 0.01  # relative std of the Gaussian noise on the copied weights (0: an exact copy)
    freeze_old: bool = False  # the old routed experts' weights stay as loaded (trainable: false)
    # the new router row: rule (the copied expert's row, or the mean of the old rows for shared) | domain_mean
    # (the new domain's mean router input less all domains' mean, as routing.router_init=domain_mean, this row only)
    router_row: str = "rule"

    def __post_init__(self) -> None:
        _one_of(self.init, "grow.init", ("shared", "most_used"))
        _one_of(self.router_row, "grow.router_row", ("rule", "domain_mean"))
        _check(self.noise >= 0, "grow.noise", f"must be >= 0, got {self.noise}")


@dataclass
class OptimizerConfig:
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    router_lr_mult: float = 1.0
    grad_clip: float = 1.0
    fused: bool = True  # fused AdamW kernel where the device supports it

    def __post_init__(self) -> None:
        _check(math.isfinite(self.lr) and self.lr > 0, "optimizer.lr", f"must be a finite number > 0, got {self.lr}")
        _check(self.grad_clip >= 0, "optimizer.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optimizer.betas",
               "must be two numbers in [0, 1)")
        _check(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
        _check(self.router_lr_mult > 0, "optimizer.router_lr_mult", "must be > 0")


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine (linear warmup + cosine) | constant | wsd (warmup-stable-decay)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2  # wsd: fraction of max_steps spent decaying

    def __post_init__(self) -> None:
        _one_of(self.name, "scheduler.name", ("cosine", "constant", "wsd"))
        _check(self.warmup_steps >= 0, "scheduler.warmup_steps", "must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "scheduler.min_lr_ratio", "must be in [0, 1]")
        _check(0.0 < self.decay_fraction <= 1.0, "scheduler.decay_fraction", "must be in (0, 1]")


@dataclass
class PrecisionConfig:
    name: str = "bf16"  # bf16 -> bf16-mixed, fp16 -> 16-mixed, fp32 -> 32-true, auto -> bf16 unless a GPU lacks it

    def __post_init__(self) -> None:
        _one_of(self.name, "precision.name", ("bf16", "fp16", "fp32", "auto"))

    @property
    def resolved(self) -> str:
        """`auto`: bf16 on the CPU and on GPUs that run it natively (compute capability 8.0 and newer), fp16 on
        older GPUs such as Colab's T4 (7.5), where torch.cuda.is_bf16_supported() counts emulated bf16 as
        supported but runs it slowly."""
        if self.name != "auto":
            return self.name
        import torch

        if torch.cuda.is_available() and not (torch.cuda.get_device_capability() >= (8, 0)
                                              and torch.cuda.is_bf16_supported(including_emulation=False)):
            return "fp16"
        return "bf16"

    @property
    def lightning(self) -> str:
        return {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}[self.resolved]


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    accumulate_grad_batches: int = 1
    accelerator: str = "auto"
    # recompute each block's activations in the backward pass: less memory, one more forward pass per step
    gradient_checkpointing: bool = False
    # the LM head and cross-entropy that many tokens at a time, never holding all logits (0 = all at once)
    ce_chunk_size: int = 0
    log_every_n_steps: int = 10
    val_check_interval: Optional[int] = None  # in optimizer steps; null = no validation loop
    limit_val_batches: int = 8
    fast_dev_run: bool = False
    compile: bool = False  # torch.compile the model (CUDA)
    # torch.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune (CUDA graphs, tuned kernels) |
    # max-autotune-no-cudagraphs
    compile_mode: str = "default"
    compile_fullgraph: bool = False  # true: a graph break is an error instead of a split graph
    compile_backend: str = "inductor"  # aot_eager: trace forward and backward without code generation (debugging)
    deterministic: bool = False
    peak_flops: Optional[float] = None  # per-device peak FLOP/s for MFU; null = look up the device
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _check(self.max_steps > 0, "trainer.max_steps", "must be > 0")
        _check(self.accumulate_grad_batches > 0, "trainer.accumulate_grad_batches", "must be > 0")
        _check(self.val_check_interval is None or self.val_check_interval > 0, "trainer.val_check_interval",
               "must be > 0 (optimizer steps between validations) or null (no validation)")
        _check(self.log_every_n_steps > 0, "trainer.log_every_n_steps", "must be > 0")
        _check(self.limit_val_batches >= 0, "trainer.limit_val_batches", "must be >= 0")
        _check(self.ce_chunk_size >= 0, "trainer.ce_chunk_size", "must be >= 0 (0 = no chunks)")
        _one_of(self.accelerator, "trainer.accelerator", ("auto", "cpu", "gpu", "cuda", "mps", "tpu"))
        _one_of(self.compile_mode, "trainer.compile_mode",
                ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
        _one_of(self.compile_backend, "trainer.compile_backend", ("inductor", "aot_eager", "eager"))


@dataclass
class StrategyConfig:
    """How many processes train and how they share the work (conf/strategy/, moe_lm/training/distributed.py)."""

    name: str = "single"  # single: one process | ddp: a model copy per process | fsdp: sharded per transformer block
    devices: str = "auto"  # processes per node: a number, or auto (every GPU; ddp/fsdp on CPU need a number)
    num_nodes: int = 1

    def __post_init__(self) -> None:
        _one_of(self.name, "strategy.name", ("single", "ddp", "fsdp"))
        _check(self.devices == "auto" or (self.devices.isdigit() and int(self.devices) > 0), "strategy.devices",
               f"auto or a number of processes > 0, got {self.devices!r}")
        _check(self.num_nodes > 0, "strategy.num_nodes", "must be > 0")
        _check(self.name != "single" or (self.devices in ("auto", "1") and self.num_nodes == 1), "strategy.devices",
               "strategy=single runs one process; use strategy=ddp or strategy=fsdp for more")

    @property
    def world_size(self) -> Optional[int]:
        """Processes in all, where the config says (None: devices=auto, known once Lightning counts the GPUs)."""
        return 1 if self.name == "single" else None if self.devices == "auto" else int(self.devices) * self.num_nodes


@dataclass
class LoggerConfig:
    wandb: bool = False
    wandb_mode: str = "offline"  # offline unless configured online
    project: str = "moe_lm"
    name: str = ""  # empty = the run directory's name
    group: str = ""  # empty = the sweep's name under `-m` (one group per multirun), else none
    csv: bool = True

    def __post_init__(self) -> None:
        _one_of(self.wandb_mode, "logger.wandb_mode", ("offline", "online", "disabled"))


@dataclass
class CheckpointConfig:
    """`checkpoint.*`: where and when checkpoints are written, and where a run resumes from."""

    resume: Optional[str] = None  # auto (this run's last.ckpt, if any) | PATH | null
    dir: str = ""  # empty = <out_dir>/checkpoints; e.g. a mounted Google Drive folder on Colab
    every_n_steps: int = 0  # 0 = off
    every_minutes: float = 0.0  # wall-clock saves (Colab disconnects); 0 = off

    def __post_init__(self) -> None:
        _check(self.every_n_steps >= 0, "checkpoint.every_n_steps", "must be >= 0")
        _check(self.every_minutes >= 0, "checkpoint.every_minutes", "must be >= 0")


@dataclass
class EvalConfig:
    """Post-training checks of the overfit demo (moe_lm/eval/overfit.py), and held-out evaluation at validation."""

    reproduce_lines: int = 0  # greedy-decode this many training lines from their prefix
    prompt_tokens: int = 8
    heldout_root: str = ""  # a directory laid out like paths.data_root: heldout/<domain>/bpb at every validation
    heldout_max_documents: int = 20  # per domain

    def __post_init__(self) -> None:
        _check(self.reproduce_lines >= 0, "eval.reproduce_lines", "must be >= 0")
        _check(self.prompt_tokens > 0, "eval.prompt_tokens", "must be > 0")
        _check(self.heldout_max_documents > 0, "eval.heldout_max_documents", "must be > 0")


@dataclass
class PathsConfig:
    """`paths.*`: where things are on this machine."""

    data_root: str = "../shared/data"  # local copies of the upstream datasets (data.source=local)
    resources: str = ""  # the package's resources folder (set by conf/paths/default.yaml)
