"""Typed config schemas, one dataclass per Hydra config group.

The schemas are registered in Hydra's ConfigStore (`register_configs`): each command's primary YAML
(`conf/config.yaml`, `conf/generate.yaml`, ...) and each `data` group YAML names its schema in its
defaults list, so a YAML key that does not exist in a schema, or a value of the wrong type, fails at
compose time. Cross-field checks live in `__post_init__` and run when `moe_lm.cli.compose` converts the
composed config with `OmegaConf.to_object`, i.e. before any data is read or any weight is allocated.
Every error names the offending key (`model.n_heads`, `data.seq_len`, ...). This module imports nothing
of moe_lm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


class ConfigError(ValueError):
    """An impossible configuration; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")


ACTIVATIONS = ("swiglu", "geglu", "gelu", "learned_gelu")
# the model.* keys of the architecture ablation (conf/arch, conf/experiment/architecture_ablation.yaml)
ARCHITECTURE_SWITCHES = ("activation", "qk_norm", "attn_softcap", "logit_softcap", "output_z_loss_coef",
                         "sliding_window", "window_pattern", "router_type", "aux_loss_scope", "mtp_depth",
                         "mtp_loss_weight")


@dataclass
class ModelConfig:
    name: str = "moe_100m"
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    max_seq_len: int = 1024
    # attention: "mla" (DeepSeek-V2/V3 multi-head latent attention) or "gqa" (RoPE + n_kv_heads)
    attention: str = "mla"
    q_lora_rank: Optional[int] = None  # null = full query projection
    kv_lora_rank: int = 256
    qk_nope_head_dim: int = 64
    qk_rope_head_dim: int = 32
    v_head_dim: int = 64
    mla_absorb: bool = True  # cached decoding attends in the latent space (weight absorption)
    n_kv_heads: int = 2  # gqa only
    head_dim: int = 64  # gqa only
    rope_theta: float = 10000.0
    # feed-forward
    n_shared_experts: int = 2
    n_routed_experts: int = 5
    moe_intermediate_size: int = 576
    top_k: int = 2
    scoring: str = "sigmoid"  # sigmoid (DeepSeek-V3; exports exactly) | softmax (DeepSeek-V2)
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    first_k_dense: int = 0  # the first k layers use a dense MLP
    dense_intermediate_size: int = 2048
    # FFN: swiglu | geglu (gated) | gelu | learned_gelu (one up projection; learned_gelu learns a per-channel
    # scale and shift before the GELU). "silu" is read as swiglu (configs written before session 7).
    activation: str = "swiglu"
    # how the routed experts run (same outputs): auto | loop | grouped_mm | bmm (moe_lm/model/moe.py)
    moe_impl: str = "auto"
    # load balancing, each switchable
    use_aux_loss: bool = True  # switch/GShard loss over all tokens of the batch
    aux_loss_coef: float = 0.01
    use_aux_free_bias: bool = True  # DeepSeek-V3 selection bias
    bias_update_rate: float = 0.001
    use_z_loss: bool = True
    z_loss_coef: float = 0.001
    # architecture switches (moe_lm/model; README "Architecture switches"); the defaults are the original model
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (MLA: on the nope and rope parts apart)
    attn_softcap: float = 0.0  # > 0: attention logits -> cap * tanh(logits / cap)
    logit_softcap: float = 0.0  # > 0: the LM head's logits -> cap * tanh(logits / cap)
    output_z_loss_coef: float = 0.0  # > 0: adds coef * mean(logsumexp(LM logits)^2) to the training loss
    sliding_window: int = 0  # > 0: the local layers attend to the last sliding_window positions (cache keeps those)
    window_pattern: str = "L"  # per layer, cycled: L = local (sliding_window), G = global
    router_type: str = "token_choice"  # token_choice | expert_choice (training only, not causal) | hash (token id)
    aux_loss_scope: str = "batch"  # batch (switch/GShard) | sequence (DeepSeek-V3's complementary loss)
    mtp_depth: int = 0  # 1: one DeepSeek-V3 multi-token-prediction module (predicts t+2), dropped at inference
    mtp_loss_weight: float = 0.3
    # misc
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        k = "model."
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "n_routed_experts",
                     "moe_intermediate_size", "top_k"):
            _check(getattr(self, name) > 0, k + name, "must be > 0")
        _one_of(self.attention, k + "attention", ("mla", "gqa"))
        _one_of(self.scoring, k + "scoring", ("softmax", "sigmoid"))
        if self.activation == "silu":
            self.activation = "swiglu"
        _one_of(self.activation, k + "activation", ACTIVATIONS)
        _one_of(self.router_type, k + "router_type", ("token_choice", "expert_choice", "hash"))
        _one_of(self.aux_loss_scope, k + "aux_loss_scope", ("batch", "sequence"))
        for name in ("attn_softcap", "logit_softcap", "output_z_loss_coef", "mtp_loss_weight", "sliding_window"):
            _check(getattr(self, name) >= 0, k + name, "must be >= 0")
        _check(self.mtp_depth in (0, 1), k + "mtp_depth", f"must be 0 or 1 (one MTP module), got {self.mtp_depth}")
        _check(bool(self.window_pattern) and set(self.window_pattern) <= {"L", "G"}, k + "window_pattern",
               f"must be a non-empty string of L (local) and G (global), got {self.window_pattern!r}")
        _check(not self.sliding_window or "L" in self.window_pattern, k + "window_pattern",
               f"sliding_window={self.sliding_window} but no layer is local (L) in {self.window_pattern!r}")
        _check(self.router_type != "hash" or self.vocab_size >= self.n_routed_experts, k + "router_type",
               "hash routing needs vocab_size >= n_routed_experts")
        _one_of(self.moe_impl, k + "moe_impl", ("auto", "loop", "grouped_mm", "bmm"))
        _check(self.top_k <= self.n_routed_experts, k + "top_k",
               f"top_k={self.top_k} exceeds model.n_routed_experts={self.n_routed_experts}")
        _check(self.n_shared_experts >= 0, k + "n_shared_experts", "must be >= 0")
        _check(0 <= self.first_k_dense <= self.n_layers, k + "first_k_dense", "must be in [0, n_layers]")
        _check(0.0 <= self.dropout < 1.0, k + "dropout", "must be in [0, 1)")
        _check(self.init_std > 0, k + "init_std", "must be > 0")
        if self.attention == "mla":
            _check(self.qk_rope_head_dim % 2 == 0 and self.qk_rope_head_dim > 0, k + "qk_rope_head_dim",
                   f"RoPE needs an even positive dim, got {self.qk_rope_head_dim}")
            _check(self.kv_lora_rank > 0, k + "kv_lora_rank", "must be > 0")
            _check(self.q_lora_rank is None or self.q_lora_rank > 0, k + "q_lora_rank", "must be null or > 0")
            _check(self.qk_nope_head_dim > 0 and self.v_head_dim > 0, k + "qk_nope_head_dim",
                   "qk_nope_head_dim and v_head_dim must be > 0")
        else:
            _check(self.head_dim % 2 == 0, k + "head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
            _check(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, k + "n_kv_heads",
                   f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense

    def switches(self) -> str:
        """The architecture switches set away from their defaults, "key=value; ..." ("baseline" when none)."""
        default = ModelConfig()
        changed = [f"{k}={getattr(self, k)}" for k in ARCHITECTURE_SWITCHES if getattr(self, k) != getattr(default, k)]
        return "; ".join(changed) or "baseline"

    def window_of(self, layer_idx: int) -> int:
        """The sliding window of layer `layer_idx` (0: global attention)."""
        local = self.window_pattern[layer_idx % len(self.window_pattern)] == "L"
        return self.sliding_window if local else 0


@dataclass
class SourceConfig:
    """One upstream dataset of a domain."""

    hub_id: str = ""  # e.g. openai/gsm8k
    config: Optional[str] = None  # HF config name, e.g. "main"
    split: str = "train"
    weight: float = 1.0  # share of the domain's token budget
    formatter: str = "text"  # moe_lm.data.formatters
    local_file: str = ""  # the same records as JSONL/parquet, relative to data.local_root
    # Files of the hub repo to stream instead of its loading code, a glob relative to the repo root (e.g.
    # data/train.us_bills.jsonl.xz). Needed where the repo still ships a loading script, which `datasets` >= 4
    # refuses to run; the glob then picks the split and `config` is not used.
    data_files: str = ""
    # A branch or ref of the hub repo to read, e.g. refs/convert/parquet (the hub's parquet conversion of a repo
    # that only has a loading script or archives); with data_files, the glob is taken in that revision.
    revision: str = ""
    gated: bool = False  # the hub requires accepting terms and a token: skipped, with a warning, when none is set


@dataclass
class DomainConfig:
    expert: Optional[int] = None  # routed expert it warm-starts; null = shared backbone only (web)
    token_budget: int = 5_000_000
    sources: List[SourceConfig] = field(default_factory=list)


@dataclass
class DataConfig:
    """Fields every data pipeline has; `data=<name>` picks one of the two schemas below."""

    seq_len: int = 64
    batch_size: int = 16
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self.seq_len > 1, "data.seq_len", "must be > 1")
        _check(self.batch_size > 0, "data.batch_size", "must be > 0")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class LinesDataConfig(DataConfig):
    """`data=overfit_100_lines`: each line of a small text file is a document (moe_lm/data/text_lines.py)."""

    path: str = ""
    # packed (whole lines per sample) | lines (one per sample) | windows (random offsets) | aligned (line starts)
    sampling: str = "packed"
    tokenizer_vocab_size: int = 32000  # target size of the BPE trained on the file

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(bool(self.path), "data.path", "must name a text file")
        _one_of(self.sampling, "data.sampling", ("packed", "lines", "windows", "aligned"))
        _check(self.tokenizer_vocab_size >= 257, "data.tokenizer_vocab_size", "must be >= 257 (256 bytes + <|endoftext|>)")

    def describe(self) -> str:
        return Path(self.path).name


@dataclass
class DomainsDataConfig(DataConfig):
    """`data=domains`: per-domain token shards written by `python -m moe_lm.prepare` (moe_lm/data/shards.py)."""

    source: str = "hub"  # hub (stream from the HF hub) | local (same schemas under local_root)
    local_root: str = ""
    # source=hub: a directory holding copies of the hub repos (<dir>/<owner>/<name>, other refs at
    # <dir>/<owner>/<name>@<revision>), streamed by the same `datasets` calls instead of the network; empty = the hub
    hub_mirror: str = ""
    domains: Dict[str, DomainConfig] = field(default_factory=dict)
    token_budget_range: List[int] = field(default_factory=lambda: [5_000_000, 50_000_000])
    shards: str = "data/shards"  # written by moe_lm.prepare
    round_robin_steps: int = 0  # phase 1: optimizer steps of single-domain batches, cycling the expert domains
    round_robin_web: bool = True  # interleave web batches in the round-robin cycle
    mixture: str = "tokens"  # phase 2 weights: tokens (proportional) | temperature | explicit
    mixture_temperature: float = 1.0  # p ~ tokens ** (1 / T)
    mixture_weights: Dict[str, float] = field(default_factory=dict)  # for mixture=explicit
    val_batches_per_domain: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.source, "data.source", ("hub", "local"))
        _one_of(self.mixture, "data.mixture", ("tokens", "temperature", "explicit"))
        _check(self.mixture_temperature > 0, "data.mixture_temperature", "must be > 0")
        _check(self.round_robin_steps >= 0, "data.round_robin_steps", "must be >= 0")
        _check(self.val_batches_per_domain > 0, "data.val_batches_per_domain", "must be > 0")
        _check(bool(self.domains), "data.domains", "needs at least one domain")
        if self.mixture == "explicit":
            _check(set(self.mixture_weights) == set(self.domains) and all(w >= 0 for w in self.mixture_weights.values())
                   and sum(self.mixture_weights.values()) > 0, "data.mixture_weights",
                   f"needs a non-negative weight for each of {sorted(self.domains)}")
        lo, hi = self.token_budget_range
        for name, d in self.domains.items():
            key = f"data.domains.{name}"
            _check(lo <= d.token_budget <= hi, key + ".token_budget",
                   f"{d.token_budget:,} is outside the accepted {lo:,}-{hi:,} tokens")
            _check(bool(d.sources), key + ".sources", "needs at least one source")
            for i, src in enumerate(d.sources):  # formatter names are checked by moe_lm.data.formatters
                _check(src.weight > 0, f"{key}.sources[{i}].weight", "must be > 0")

    def describe(self) -> str:
        return "domains (" + ", ".join(self.domains) + ")"


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
      the other slots are chosen by the router);
    - warm_balance: batch (the aux loss and the aux-free bias see each step's batch) | window (both see the
      expert loads of the last `n` steps, n = the domains of the round-robin cycle, so a one-domain batch is
      not pushed off its expert) | off (no aux loss and no bias update during the warm start);
    - router_init: random | domain_mean (each routed expert's router row starts as the mean router input of
      its domain's tokens, less the mean over all domains, scaled to a random row's norm; computed from
      `router_init_batches` batches per domain before the first step of a fresh run, after init_from).
    """

    warm_batches: str = "round_robin"  # round_robin | mixed
    warm_routing: str = "learned"  # learned | guided | forced
    warm_balance: str = "batch"  # batch | window | off
    router_init: str = "random"  # random | domain_mean
    router_init_batches: int = 4  # router_init=domain_mean: batches per domain
    guided_coef: float = 0.1  # weight of the router supervision term at step 0
    guided_anneal: str = "linear"  # linear | cosine | constant (then 0 after the warm start)

    def __post_init__(self) -> None:
        _one_of(self.warm_batches, "routing.warm_batches", ("round_robin", "mixed"))
        _one_of(self.warm_routing, "routing.warm_routing", ("learned", "guided", "forced"))
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
class TokenizerConfig:
    """`python -m moe_lm.tokenizer`: the multi-domain byte-level BPE."""

    vocab_size: int = 32000
    sample_bytes_per_domain: int = 2_000_000  # domain-balanced training sample
    out: str = "data/tokenizer"  # writes tokenizer.json and tokenizer.meta.json here

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 512, "tokenizer.vocab_size", "must be >= 512 (256 bytes + merges + specials)")
        _check(self.sample_bytes_per_domain > 0, "tokenizer.sample_bytes_per_domain", "must be > 0")


@dataclass
class PrepareConfig:
    """`python -m moe_lm.prepare`: token shards per domain."""

    out: str = "data/shards"
    tokenizer: str = "data/tokenizer/tokenizer.json"
    val_fraction: float = 0.01  # share of documents (not tokens) held out
    batch_documents: int = 256  # documents tokenised per batch (encode_batch runs on all cores)
    checkpoint_every: int = 1024  # documents between progress checkpoints
    # 0: tokenise in this process (the tokenizer's threads use every core); N: a pool of N processes, one thread
    # each, batches in order (the same bytes either way)
    workers: int = 0

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, "prepare.val_fraction", "must be in [0, 1)")
        _check(self.batch_documents > 0, "prepare.batch_documents", "must be > 0")
        _check(self.checkpoint_every > 0, "prepare.checkpoint_every", "must be > 0")
        _check(self.workers >= 0, "prepare.workers", "must be >= 0 (0 = in this process)")


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


def resources_dir() -> Path:
    """Files shipped inside the package (the overfit demo's text); found through the package, not the cwd."""
    return Path(__file__).resolve().parent / "resources"


@dataclass
class PathsConfig:
    """`paths.*`: where things are on this machine."""

    data_root: str = "../shared/data"  # local copies of the upstream datasets (data.source=local)
    resources: str = ""  # the package's resources folder (set by conf/paths/default.yaml)


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
        r = self.routing
        if r.warm_steps_needed or r.router_init != "random":
            key = ("routing.warm_routing" if r.warm_routing != "learned" else
                   "routing.warm_balance" if r.warm_balance != "batch" else "routing.router_init")
            _check(isinstance(self.data, DomainsDataConfig) and (self.data.round_robin_steps > 0 or
                                                                 not r.warm_steps_needed), key,
                   f"{r.arm} needs multi-domain data (data=domains) and a warm start (data.round_robin_steps > 0)")
            _check(self.model.first_k_dense < self.model.n_layers, key,
                   f"{r.arm} needs MoE layers (model.first_k_dense < model.n_layers)")
        if r.warm_routing == "forced" or r.warm_balance == "window" or r.router_init == "domain_mean":
            _check(self.model.router_type == "token_choice", "model.router_type",
                   f"routing {r.arm} needs token_choice routing, got {self.model.router_type}")
        for name, d in getattr(self.data, "domains", {}).items():
            _check(d.expert is None or 0 <= d.expert < self.model.n_routed_experts, f"data.domains.{name}.expert",
                   f"{d.expert} is not a routed expert of a model with {self.model.n_routed_experts}")


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
class GenerateConfig(SamplingConfig):
    """`python -m moe_lm.generate`: conf/generate.yaml."""

    ckpt: str = ""
    prompt: str = ""
    prompt_file: str = ""  # the prompt is this file's text ('-' = stdin), instead of prompt=
    chat: bool = False
    device: str = "cpu"

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

    def __post_init__(self) -> None:
        _check(bool(self.ckpt), "ckpt", "required, e.g. ckpt=runs/overfit_100_lines/checkpoints/final.ckpt")
        _check(not (self.prompt and self.prompt_file), "prompt_file", "give prompt= or prompt_file=, not both")
        _check(self.top > 0, "top", "must be > 0")


@dataclass
class ExportConfig:
    """`python -m moe_lm.export`: conf/export.yaml (moe_lm/inference/hf_dir.py)."""

    ckpt: str = ""
    out: str = ""
    dtype: str = "float32"  # float32 | bfloat16 | float16: the dtype of the exported weights
    max_shard_mb: int = 2000  # weights above this are split into model-0000i-of-0000n.safetensors + an index

    def __post_init__(self) -> None:
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
    mfu: Optional[float] = None  # null: 0.35 on a GPU, 0.23 on cpu (measured by experiments/bench_train_step.py)
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
    max_tokens: int = 0  # task=lm/knockout with data.shards: the first N val tokens per domain, 0 = all
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
