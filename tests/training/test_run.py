"""End-to-end training through Lightning on tiny configs, in process."""

from pathlib import Path

import pytest
import torch

from moe_lm.cli import compose, conf_dir
from moe_lm.config import DomainsDataConfig
from moe_lm.training.run import train

TINY = ["model=moe_tiny", "model.vocab_size=2048", "precision=fp32", "trainer.progress_bar=false",
        "logger.csv=false", "trainer.log_every_n_steps=1"]
TWO_LINES = ("the quick brown fox jumps over the lazy dog while seven wizards quietly juggle boxes.\n"
             "pack my box with five dozen liquor jugs, then sphinx of black quartz judge my vow.\n")


@pytest.fixture
def overfit_run(tmp_path_factory):
    """moe_tiny memorises two lines (300 steps, ~15 s); its run directory and captured result."""
    tmp = tmp_path_factory.mktemp("overfit")
    data = tmp / "lines.txt"
    data.write_text(TWO_LINES)
    cfg = compose(TINY + ["+experiment=overfit_100_lines", f"data.path={data}", "data.sampling=lines",
                          "data.batch_size=2", "optimizer.lr=3e-3", "trainer.max_steps=300", "eval.reproduce_lines=2",
                          "eval.prompt_tokens=3", f"out_dir={tmp}/run"])
    return cfg, train(cfg, cfg.out_dir)


def test_moe_tiny_overfits_a_short_string(overfit_run, capsys):
    cfg, result = overfit_run
    assert result["final_train_loss"] < 0.05
    assert result["reproduced"] == 2 and result["train_loss_full_pass"] < 0.05
    run = Path(cfg.out_dir)
    assert (run / "loss_curve.png").stat().st_size > 1000
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["moe_lm_config"]["model"]["name"] == "moe_tiny"
    assert "<|endoftext|>" in ckpt["tokenizer_json"]
    assert any(k.endswith("e_score_correction_bias") for k in ckpt["state_dict"])


def test_demo_output_ends_with_the_reproduced_count(tmp_path, capsys):
    data = tmp_path / "lines.txt"
    data.write_text(TWO_LINES)
    cfg = compose(TINY + ["+experiment=overfit_100_lines", f"data.path={data}", "data.sampling=lines",
                          "trainer.max_steps=2", "eval.reproduce_lines=2", f"out_dir={tmp_path}/run"])
    result = train(cfg, cfg.out_dir)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"reproduced: {result['reproduced']}/2"  # what `make demo` ends with
    assert any(line.startswith("train loss ") and "(full pass over the training set)" in line for line in out)


def test_router_bias_updates_once_per_optimizer_step(tmp_path, monkeypatch):
    from moe_lm.model.transformer import MoETransformer

    calls = []
    orig = MoETransformer.update_router_biases
    monkeypatch.setattr(MoETransformer, "update_router_biases", lambda self: (calls.append(1), orig(self)))
    cfg = compose(TINY + ["trainer.max_steps=3", "trainer.accumulate_grad_batches=2", "data.batch_size=4",
                          f"out_dir={tmp_path}"])
    train(cfg, tmp_path)
    assert len(calls) == 3


def test_final_checkpoint_goes_where_checkpoint_dir_says(tmp_path):
    cfg = compose(TINY + ["trainer.max_steps=2", f"checkpoint.dir={tmp_path}/elsewhere", f"out_dir={tmp_path}/run"])
    train(cfg, cfg.out_dir)
    assert (tmp_path / "elsewhere" / "final.ckpt").is_file() and (tmp_path / "elsewhere" / "last.ckpt").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_loss_curve_title_names_the_data_of_the_run(tmp_path, monkeypatch, fake_shards):
    titles = []
    monkeypatch.setattr("moe_lm.eval.plots.loss_curve", lambda history, path, title: titles.append(title))
    cfg = compose(TINY + ["data=domains", f"data.shards={fake_shards}", f"prepare.out={fake_shards}", "data.seq_len=16",
                          "trainer.max_steps=2", f"out_dir={tmp_path}/run", f"prepare.tokenizer={tmp_path}/tok.json"])
    from moe_lm.data.shards import DomainDataModule
    from moe_lm.training import run

    monkeypatch.setattr(run, "build_data", lambda cfg, out: (None, DomainDataModule(cfg.data, cfg.seed)))  # no tokenizer
    train(cfg, cfg.out_dir)
    assert titles == ["moe_tiny on domains (math, code, science, legal, chat, web)"]


EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_runs_fast_dev_run(name, tmp_path, request):
    overrides = [f"+experiment={name}", "trainer.fast_dev_run=true", "trainer.progress_bar=false",
                 "logger.csv=false", "logger.wandb=false", f"out_dir={tmp_path}"]
    if isinstance(compose(overrides).data, DomainsDataConfig):
        shared = request.getfixturevalue("shared_data")  # skips, saying why, when ../shared/data is absent
        overrides += [f"paths.data_root={shared}", f"data.shards={tmp_path}/shards", f"prepare.out={tmp_path}/shards",
                      f"prepare.tokenizer={tmp_path}/tok/tokenizer.json"]
    cfg = compose(overrides)
    result = train(cfg, tmp_path)
    assert result["steps"] == 1
    assert torch.isfinite(torch.tensor(result["final_train_loss"]))


def test_wandb_logger_runs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(TINY + ["logger=wandb", "trainer.max_steps=2", f"out_dir={tmp_path}"])
    train(cfg, tmp_path)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_progress_bar_counts_optimizer_steps():
    from types import SimpleNamespace

    from moe_lm.training.callbacks import StepProgressBar

    bar = StepProgressBar(leave=True)
    bar._trainer = SimpleNamespace(global_step=300, max_steps=800)
    assert bar._get_train_description(3).strip() == "Epoch 3, step 300/800"
