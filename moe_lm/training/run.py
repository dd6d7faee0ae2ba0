"""One training run from a validated TrainConfig: data, model, callbacks, loggers, Trainer; fit; artefacts.

Artefacts in the run directory: `checkpoints/{last,final}.ckpt` (or under `checkpoint.dir`), `model.safetensors`,
`tokenizer.json` (overfit demo), `loss_curve.png`, `csv/metrics.csv` (continued across resumes), `routing/`
heatmaps and scores, `config.yaml` (the resolved config), `result.json`. A run stopped by SIGTERM/SIGINT keeps
its `last.ckpt` and writes no final artefacts.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import warnings
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from tokenizers import Tokenizer

from moe_lm.config import ConfigError, DomainsDataConfig, TrainConfig
from moe_lm.data.files import DirectoryLock, link_or_copy, remove_stale_temporaries, write_json_atomic
from moe_lm.data.pipelines import build_data
from moe_lm.model.counting import param_breakdown, train_flops_per_token
from moe_lm.training.callbacks import (FirstBatchPrinter, HeldoutEval, LineProgress, LossCurve, StepProgressBar,
                                      Throughput, interactive_terminal)
from moe_lm.training.checkpointing import AtomicCheckpointIO, RunState, SaveOnSignal, StepCheckpoint, resolve_resume
from moe_lm.training.distributed import lightning_strategy
from moe_lm.training.init_from import load_init_weights, resolve_init
from moe_lm.training.lit_module import MoELitModule
from moe_lm.training.loggers import build_loggers
from moe_lm.training.routing_monitor import RoutingMonitor
from moe_lm.training.torch_compile import compile_model, compile_report, report_line


def checkpoint_dir(cfg: TrainConfig, out_dir: Path) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else out_dir / "checkpoints"


def run_title(cfg: TrainConfig, experiment: str = "") -> str:
    """What a figure of this run is titled: the experiment (when one was named), the model and the data."""
    return f"{experiment + ': ' if experiment else ''}{cfg.model.name} on {cfg.data.describe()}"


def build_callbacks(cfg: TrainConfig, out_dir: Path, module: MoELitModule, tok, experiment: str = "",
                    heldout_domains: DomainsDataConfig | None = None) -> list[L.Callback]:
    ck, ckdir = cfg.checkpoint, checkpoint_dir(cfg, out_dir)
    flops = train_flops_per_token(cfg.model, param_breakdown(module.model, cfg.model), cfg.data.seq_len)
    callbacks: list[L.Callback] = [
        StepCheckpoint(dirpath=str(ckdir), save_last=True, save_top_k=0),
        SaveOnSignal(ckdir / "last.ckpt"), RunState(),
        LossCurve(out_dir / "loss_curve.png", run_title(cfg, experiment)),
        Throughput(flops, cfg.trainer.peak_flops),
        RoutingMonitor(module.domains, cfg.model.n_routed_experts, cfg.model.first_k_dense,
                       [cfg.data.domains[d].expert for d in module.domains])]
    if tok is not None:
        callbacks.append(FirstBatchPrinter(tok))
    if cfg.eval.heldout_root and tok is not None:
        registry = cfg.data if isinstance(cfg.data, DomainsDataConfig) else heldout_domains
        if registry is None:
            raise ConfigError("eval.heldout_root: the domains' file formats are needed (data=domains, or the caller "
                              "passes them)")
        callbacks.append(HeldoutEval(registry, cfg.eval.heldout_root, cfg.eval.heldout_max_documents, cfg.data.seq_len,
                                     tok))
    if ck.every_n_steps:
        callbacks.append(StepCheckpoint(dirpath=str(ckdir), filename="step{step:07d}", auto_insert_metric_name=False,
                                        every_n_train_steps=ck.every_n_steps, save_top_k=-1, save_last=True))
    if ck.every_minutes:
        callbacks.append(StepCheckpoint(dirpath=str(ckdir), save_last=True, save_top_k=0,
                                        train_time_interval=timedelta(minutes=ck.every_minutes)))
    if cfg.trainer.progress_bar:  # a live bar in a terminal; plain lines, about 20 a run, elsewhere (a notebook, a log)
        callbacks.append(StepProgressBar(leave=True) if interactive_terminal()
                         else LineProgress(every=max(1, cfg.trainer.max_steps // 20)))
    return callbacks


def build_trainer(cfg: TrainConfig, out_dir: Path, callbacks: list[L.Callback], resume_from: str | None) -> L.Trainer:
    t = cfg.trainer
    validate = t.val_check_interval is not None
    strategy, devices, num_nodes = lightning_strategy(cfg)
    return L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator, devices=devices, num_nodes=num_nodes,
        strategy=strategy, use_distributed_sampler=False,  # each process takes its rows of the planned batch
        precision=cfg.precision.lightning, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval * t.accumulate_grad_batches if validate else None,
        check_val_every_n_epoch=None if validate else 1, limit_val_batches=t.limit_val_batches if validate else 0,
        num_sanity_val_steps=0, fast_dev_run=t.fast_dev_run, deterministic=t.deterministic,
        enable_progress_bar=t.progress_bar, logger=build_loggers(cfg, out_dir, resume_from) or False, callbacks=callbacks,
        default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()],
    )


def quiet_known_warnings() -> None:
    """Harmless Lightning messages: its model summary cannot size bf16-mixed, its own use of a deprecated torch
    pytree class, and a non-empty checkpoint directory (resolve_resume has already decided what that means)."""
    warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def save_artefacts(trainer: L.Trainer, module: MoELitModule, cfg: TrainConfig, out: Path) -> None:
    """`last.ckpt` (what checkpoint.resume=auto picks up), `final.ckpt` beside it, and the weights as safetensors.
    Every process calls this (a checkpoint save is collective: FSDP gathers the shards); the first one writes."""
    from safetensors.torch import save_file, save_model

    ckdir = checkpoint_dir(cfg, out)
    trainer.save_checkpoint(str(ckdir / "last.ckpt"), weights_only=False)
    if trainer.is_global_zero:  # the same bytes: one file on disk under two names where the filesystem links
        link_or_copy(ckdir / "last.ckpt", ckdir / "final.ckpt")
    trainer.strategy.barrier()
    if cfg.strategy.name != "fsdp":
        if trainer.is_global_zero:
            save_model(module.model, str(out / "model.safetensors"))
        return
    state = trainer.strategy.lightning_module_state_dict()  # the full weights, gathered to the first process
    if trainer.is_global_zero:
        weights = {k.removeprefix("model."): v.contiguous() for k, v in state.items() if k.startswith("model.")}
        if cfg.model.tie_embeddings:
            weights.pop("lm_head.weight", None)
        save_file(weights, str(out / "model.safetensors"))


def record_config(trainer: L.Trainer, cfg: TrainConfig, out: Path) -> None:
    """The resolved config as every logger's hyper-parameters and as `<out>/config.yaml` beside the artefacts."""
    from omegaconf import OmegaConf

    params = dataclasses.asdict(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)
    if trainer.is_global_zero:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(params)))


def launching_process() -> bool:
    """True in the process a user started; False in the extra ranks a distributed launcher starts."""
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def train(cfg: TrainConfig, out_dir: str | Path, experiment: str = "",
          heldout_domains: DomainsDataConfig | None = None) -> dict[str, Any]:
    """Train under a lock on the run directory (and on checkpoint.dir): a second run there fails at once.
    heldout_domains: how each domain's files are read, for eval.heldout_root when the data is not data=domains."""
    cfg, init_tok = resolve_init(cfg)  # a bad init_from fails before anything is written
    out, ckdir = Path(out_dir), checkpoint_dir(cfg, Path(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as locks:
        if launching_process():
            locks.enter_context(DirectoryLock(out, "out_dir", "training run"))
            if not ckdir.resolve().is_relative_to(out.resolve()):
                locks.enter_context(DirectoryLock(ckdir, "checkpoint.dir", "training run"))
            for directory in (out, ckdir):  # what a killed save left behind; the locks keep live writers out
                remove_stale_temporaries(directory)
        return fit(cfg, out, resolve_resume(cfg.checkpoint.resume, ckdir), experiment, init_tok, heldout_domains)


def fit(cfg: TrainConfig, out: Path, ckpt_path: str | None, experiment: str = "",
        init_tok: Tokenizer | None = None, heldout_domains: DomainsDataConfig | None = None) -> dict[str, Any]:
    """`init_tok`: the tokenizer of init_from's directory (resolve_init), which the data must use."""
    quiet_known_warnings()
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    tok, dm = build_data(cfg, out, init_tok)
    domains = list(getattr(dm, "names", ()))
    module = MoELitModule(cfg, tok, domains, [cfg.data.domains[d].expert for d in domains])
    if cfg.init_from and not ckpt_path and not cfg.grow.domain:  # growing loads at fit start (it needs the data)
        load_init_weights(module.model, cfg)
    if cfg.trainer.compile:
        compile_model(module.model, cfg.trainer)
    callbacks = build_callbacks(cfg, out, module, tok, experiment, heldout_domains)
    trainer = build_trainer(cfg, out, callbacks, ckpt_path)
    record_config(trainer, cfg, out)
    if ckpt_path:
        print(f"resuming from {ckpt_path}")
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    result = summary(cfg, trainer, module, time.perf_counter() - t0, next(c for c in callbacks if isinstance(c, LossCurve)))
    if cfg.trainer.compile:
        result["compile"] = compile_report()
        if trainer.is_global_zero:
            print(report_line(result["compile"]))
    stopped = next(c for c in callbacks if isinstance(c, SaveOnSignal)).stopped_by  # the same in every process
    if cfg.trainer.fast_dev_run:
        return result
    if stopped is not None:  # last.ckpt is saved; the run is not finished, so no final artefacts
        result["stopped_by"] = signal.Signals(stopped).name
        if trainer.is_global_zero:
            print(f"stopped by {result['stopped_by']} at step {result['steps']} of {cfg.trainer.max_steps}; "
                  f"continue with checkpoint.resume=auto")
    else:
        save_artefacts(trainer, module, cfg, out)
        if not trainer.is_global_zero:
            return result
        print(f"train loss {result.get('final_train_loss', float('nan')):.4f} (last batch) after {result['steps']} "
              f"steps in {result['wall_s']:.0f} s; artefacts in {out}")
        if cfg.eval.reproduce_lines > 0:
            from moe_lm.eval.overfit import overfit_report

            result.update(overfit_report(module.model, dm, tok, cfg.eval, steps=result["steps"]))
    if trainer.is_global_zero:
        write_json_atomic(out / "result.json", result)
    return result


def summary(cfg: TrainConfig, trainer: L.Trainer, module: MoELitModule, wall: float, curve: LossCurve) -> dict[str, Any]:
    parts = param_breakdown(module.model, cfg.model)
    result: dict[str, Any] = {
        "wall_s": round(wall, 1), "steps": trainer.global_step, "params": parts["total"],
        "active_params": parts["active_per_token"], "n_layers": cfg.model.n_layers, "seq_len": cfg.data.seq_len,
        "tokens": trainer.global_step * cfg.trainer.accumulate_grad_batches * cfg.data.batch_size * cfg.data.seq_len,
        "model": cfg.model.name, "dense": not any(map(cfg.model.is_moe_layer, range(cfg.model.n_layers))),
        "warm_start": cfg.routing.arm, "routing": dataclasses.asdict(cfg.routing), "seed": cfg.seed, "arch": cfg.model.switches(),
        "warm_steps": getattr(cfg.data, "round_robin_steps", 0), "top_k": cfg.model.top_k,
        "train_params": sum(p.numel() for p in module.model.parameters()),  # with training-only modules (MTP)
        "step_time_s": round(wall / max(1, trainer.global_step), 4)}
    if curve.history:
        result["final_train_loss"] = curve.history[-1][1]
    result.update({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("val/", "spec/", "heldout/"))})
    return result
