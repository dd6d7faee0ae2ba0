"""Build data, model, loggers and Trainer from a validated TrainConfig; fit; write artefacts."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from tokenizers import Tokenizer

from moe_lm.config import ConfigError, TrainConfig
from moe_lm.data.text_lines import TextLinesDataModule, read_lines
from moe_lm.data.tokenizer import eot_id, train_bpe
from moe_lm.generation import greedy_decode
from moe_lm.lit_module import MoELitModule
from moe_lm.model.counting import param_breakdown


def build_tokenizer(cfg: TrainConfig, out_dir: Path) -> Tokenizer:
    """The overfit demo trains its byte-level BPE on the data file itself, at the start of the run."""
    lines = read_lines(cfg.data.path)
    tok = train_bpe(lines, cfg.data.tokenizer_vocab_size)
    if tok.get_vocab_size() > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tok.get_vocab_size()} tokens (data.tokenizer_vocab_size={cfg.data.tokenizer_vocab_size})")
    tok.save(str(out_dir / "tokenizer.json"))
    return tok


def build_domain_data(cfg: TrainConfig, out_dir: Path):
    """Tokenizer and shards for data=domains (trained / prepared here when missing), and the DataModule."""
    from moe_lm.data.datamodule import DomainDataModule
    from moe_lm.prepare import prepare
    from moe_lm.tokenizer import train_domain_tokenizer

    tok_path = Path(cfg.prepare.tokenizer)
    if not tok_path.is_file():
        tok, meta = train_domain_tokenizer(cfg)
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(tok_path))
        (tok_path.parent / "tokenizer.meta.json").write_text(json.dumps(meta, indent=2))
    tok = Tokenizer.from_file(str(tok_path))
    if tok.get_vocab_size() > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's {tok.get_vocab_size()}")
    prepare(cfg)  # idempotent: finished domains are skipped
    return tok, DomainDataModule(cfg.data, cfg.seed, cfg.trainer.accumulate_grad_batches)


def build_loggers(cfg: TrainConfig, out_dir: Path, resume_from: str | None = None) -> list:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers: list = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(str(out_dir), name="csv", version="", flush_logs_every_n_steps=cfg.trainer.log_every_n_steps))
    if cfg.logger.wandb and cfg.logger.wandb_mode != "disabled":
        os.environ.setdefault("WANDB_MODE", cfg.logger.wandb_mode)
        run_id = None
        if resume_from:
            run_id = torch.load(resume_from, map_location="cpu", weights_only=True).get("wandb_run_id")
        loggers.append(WandbLogger(project=cfg.logger.project, save_dir=str(out_dir), id=run_id, resume="allow",
                                   offline=cfg.logger.wandb_mode == "offline",
                                   name=cfg.logger.name or out_dir.name, group=cfg.logger.group or None))
    return loggers


def checkpoint_dir(cfg: TrainConfig, out_dir: Path) -> Path:
    return Path(cfg.train.dir) if cfg.train.dir else out_dir / "checkpoints"


class StepProgressBar(RichProgressBar):
    """Lightning's Rich bar, titled with optimizer steps: runs stop at max_steps, so its `Epoch 3/-2` says nothing."""

    def _get_train_description(self, current_epoch: int) -> str:
        desc = f"Epoch {current_epoch}, step {self.trainer.global_step}/{self.trainer.max_steps}"
        return f"{desc:{len(self.validation_description)}}"


def build_trainer(cfg: TrainConfig, out_dir: Path, resume_from: str | None = None) -> L.Trainer:
    from datetime import timedelta

    from lightning.pytorch.callbacks import ModelCheckpoint

    from moe_lm.checkpointing import AtomicCheckpointIO, SaveOnSignal

    t, ck, ckdir = cfg.trainer, cfg.train, checkpoint_dir(cfg, out_dir)
    callbacks: list = [ModelCheckpoint(dirpath=str(ckdir), save_last=True, save_top_k=0), SaveOnSignal(ckdir / "last.ckpt")]
    if ck.every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=str(ckdir), filename="step{step:07d}", auto_insert_metric_name=False,
                                         every_n_train_steps=ck.every_n_steps, save_top_k=-1, save_last=True))
    if ck.every_minutes:
        callbacks.append(ModelCheckpoint(dirpath=str(ckdir), save_last=True, save_top_k=0,
                                         train_time_interval=timedelta(minutes=ck.every_minutes)))
    if t.progress_bar:
        callbacks.append(StepProgressBar(leave=True))
    validate = t.val_check_interval is not None
    return L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        precision=cfg.precision.lightning, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval * t.accumulate_grad_batches if validate else None,
        check_val_every_n_epoch=None if validate else 1, limit_val_batches=t.limit_val_batches if validate else 0,
        num_sanity_val_steps=0, fast_dev_run=t.fast_dev_run, deterministic=t.deterministic,
        enable_progress_bar=t.progress_bar, logger=build_loggers(cfg, out_dir, resume_from) or False, callbacks=callbacks,
        default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()],
    )


def save_loss_curve(history: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps, losses = zip(*history)
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (cross-entropy, nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce_lines(model, tok: Tokenizer, lines: list[str], n: int, prompt_tokens: int) -> list[dict[str, Any]]:
    """Greedy-decode n evenly spaced lines from their first `prompt_tokens` tokens."""
    eot = eot_id(tok)
    picks = sorted({round(i * (len(lines) - 1) / max(1, n - 1)) for i in range(n)})
    results = []
    for i in picks:
        ids = tok.encode(lines[i]).ids
        prompt, rest = ids[:prompt_tokens], ids[prompt_tokens:]
        got = greedy_decode(model, [eot] + prompt, max_new_tokens=len(rest) + 8, eos_id=eot)
        results.append({"line": i, "ok": got == rest, "expected": lines[i], "got": tok.decode(prompt + got)})
    return results


@torch.no_grad()
def full_pass_loss(module: MoELitModule, dm: TextLinesDataModule) -> float:
    """Token-weighted mean cross-entropy over the whole training set, model in eval mode."""
    module.eval()
    total, count = 0.0, 0
    for batch in dm.val_dataloader():
        valid = batch["targets"] != -100
        logits = module.model(batch["input_ids"].to(module.device), logits_at=valid.to(module.device)).logits
        total += float(torch.nn.functional.cross_entropy(logits.float(), batch["targets"][valid].to(module.device),
                                                         reduction="sum"))
        count += int(valid.sum())
    return total / count


def export_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))


def train(cfg: TrainConfig, out_dir: str | Path) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Two harmless Lightning messages on every run: its model summary cannot size bf16-mixed, and its
    # own use of a deprecated torch pytree class.
    warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    if cfg.data.name == "domains":
        tok, dm = build_domain_data(cfg, out)
    else:
        tok = build_tokenizer(cfg, out)
        dm = TextLinesDataModule(cfg.data, tok, cfg.seed)
    module = MoELitModule(cfg, tok)
    if cfg.trainer.compile:
        module.model.compile()
    from moe_lm.checkpointing import resolve_resume

    ckpt_path = resolve_resume(cfg.train.resume, checkpoint_dir(cfg, out))
    trainer = build_trainer(cfg, out, ckpt_path)
    if ckpt_path:
        print(f"resuming from {ckpt_path}")
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    wall = time.perf_counter() - t0
    parts = param_breakdown(module.model, cfg.model)
    result: dict[str, Any] = {
        "wall_s": round(wall, 1), "steps": trainer.global_step, "params": parts["total"],
        "active_params": parts["active_per_token"], "n_layers": cfg.model.n_layers, "seq_len": cfg.data.seq_len,
        "tokens": trainer.global_step * cfg.trainer.accumulate_grad_batches * cfg.data.batch_size * cfg.data.seq_len}
    if not trainer.is_global_zero:
        return result
    if module.loss_history:
        result["final_train_loss"] = module.loss_history[-1][1]
        save_loss_curve(module.loss_history, out / "loss_curve.png", f"{cfg.model.name} on {Path(cfg.data.path).name}")
    if cfg.trainer.fast_dev_run:
        return result
    trainer.save_checkpoint(str(checkpoint_dir(cfg, out) / "last.ckpt"), weights_only=False)  # what train.resume=auto picks up
    trainer.save_checkpoint(str(out / "checkpoints" / "final.ckpt"), weights_only=False)
    if isinstance(dm, TextLinesDataModule):
        result["train_loss_full_pass"] = full_pass_loss(module, dm)
    result.update({k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    export_weights(module.model, out / "model.safetensors")
    full = f"{result['train_loss_full_pass']:.4f} (full pass over the training set; last batch " \
        if "train_loss_full_pass" in result else "(last batch "
    print(f"train loss {full}{result.get('final_train_loss', float('nan')):.4f}) after {result['steps']} steps "
          f"in {wall:.0f} s; artefacts in {out}")
    if cfg.eval.reproduce_lines > 0:
        res = reproduce_lines(module.model.float().cpu(), tok, dm.lines, cfg.eval.reproduce_lines, cfg.eval.prompt_tokens)
        for r in res:
            print(f"[{'reproduced' if r['ok'] else 'MISMATCH  '}] line {r['line']:3d}: {r['got']}")
            if not r["ok"]:
                print(f"             expected: {r['expected']}")
        result["reproduced"] = sum(r["ok"] for r in res)
        print(f"reproduced: {result['reproduced']}/{len(res)}")  # the last line `make demo` prints
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
