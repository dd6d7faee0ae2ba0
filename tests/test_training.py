"""End-to-end training through Lightning on tiny configs."""

from pathlib import Path

import pytest
import torch

from moe_lm.conf_utils import CONF_DIR, compose
from moe_lm.run import train

TINY = ["model=moe_tiny", "model.vocab_size=2048", "precision=fp32", "trainer.progress_bar=false",
        "logger.csv=false", "trainer.log_every_n_steps=1"]


def test_moe_tiny_overfits_a_short_string(tmp_path, capsys):
    data = tmp_path / "lines.txt"
    data.write_text("the quick brown fox jumps over the lazy dog while seven wizards quietly juggle boxes.\n"
                    "pack my box with five dozen liquor jugs, then sphinx of black quartz judge my vow.\n")
    cfg = compose(TINY + ["+experiment=overfit_100_lines", f"data.path={data}", "data.sampling=lines", "data.batch_size=2",
                          "optimizer.lr=3e-3", "trainer.max_steps=300", "eval.reproduce_lines=2",
                          "eval.prompt_tokens=3", f"out_dir={tmp_path}/run"])
    result = train(cfg, cfg.out_dir)
    assert result["final_train_loss"] < 0.05
    assert result["reproduced"] == 2
    assert capsys.readouterr().out.strip().splitlines()[-1] == "reproduced: 2/2"  # what `make demo` ends with
    run = Path(cfg.out_dir)
    assert (run / "loss_curve.png").stat().st_size > 1000
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["moe_lm_config"]["model"]["name"] == "moe_tiny"
    assert "<|endoftext|>" in ckpt["tokenizer_json"]
    assert any(k.endswith("e_score_correction_bias") for k in ckpt["state_dict"])
    # The checkpoint alone rebuilds model and tokenizer; the CLI streams the memorised line.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "moe_lm.generate", f"ckpt={run / 'checkpoints' / 'final.ckpt'}",
                          "prompt=pack my box", "temperature=0", "max_new_tokens=60"],
                         capture_output=True, text=True, check=True).stdout
    assert " with five dozen liquor jugs, then sphinx of black quartz judge my vow." in out
    out = subprocess.run([sys.executable, "-m", "moe_lm.inspect", f"ckpt={run / 'checkpoints' / 'final.ckpt'}",
                          "prompt=pack my box"], capture_output=True, text=True, check=True).stdout
    assert "routed_expert_4" in out and "token 4: 'Ġbox'" in out
    assert out.count("| experts ") == 5 * 2  # 5 tokens (EOT + 4) x 2 MoE layers


def test_router_bias_updates_once_per_optimizer_step(tmp_path, monkeypatch):
    from moe_lm.model.transformer import MoETransformer

    calls = []
    orig = MoETransformer.update_router_biases
    monkeypatch.setattr(MoETransformer, "update_router_biases", lambda self: (calls.append(1), orig(self)))
    cfg = compose(TINY + ["trainer.max_steps=3", "trainer.accumulate_grad_batches=2", "data.batch_size=4",
                          f"out_dir={tmp_path}"])
    train(cfg, tmp_path)
    assert len(calls) == 3


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_runs_fast_dev_run(name, tmp_path):
    overrides = [f"+experiment={name}", "trainer.fast_dev_run=true", "trainer.progress_bar=false",
                 "logger.csv=false", "logger.wandb=false", f"out_dir={tmp_path}"]
    if compose(overrides).data.name == "domains":
        if not SHARED.is_dir():
            pytest.skip(f"{name} prepares its data from {SHARED}, which is absent")
        overrides += [f"data.local_root={SHARED}", f"data.shards={tmp_path}/shards", f"prepare.out={tmp_path}/shards",
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


def test_cli_reports_bad_input_naming_it(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "moe_lm.train", *args, f"out_dir={tmp_path}",
                               f"hydra.run.dir={tmp_path}/hydra"],
                              capture_output=True, text=True)

    r = run("model.top_k=9")
    assert r.returncode == 2 and "model.top_k" in r.stderr
    r = run("data.path=/nonexistent/file.txt")
    assert r.returncode == 2 and "data.path" in r.stderr
    r = run("model.not_a_key=1")
    assert r.returncode != 0 and "not_a_key" in r.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing was started


def test_two_run_sweep_yields_a_two_row_report(tmp_path):
    import subprocess
    import sys

    if not SHARED.is_dir():
        pytest.skip(f"the sweep prepares its data from {SHARED}, which is absent")
    sweep = tmp_path / "sweep"
    subprocess.run([sys.executable, "-m", "moe_lm.train", "-m", "+experiment=ablate_depth_seqlen", "model.n_layers=1,2",
                    "data.seq_len=32", "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.progress_bar=false",
                    f"data.local_root={SHARED}", f"data.shards={tmp_path}/shards", f"prepare.out={tmp_path}/shards",
                    f"prepare.tokenizer={tmp_path}/tok/tokenizer.json", f"hydra.sweep.dir={sweep}",
                    f"hydra.run.dir={tmp_path}/hydra"],
                   check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "moe_lm.report", str(sweep)], check=True, capture_output=True,
                         text=True).stdout
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| run")]
    assert len(rows) == 2 and {r.split("|")[2].strip() for r in rows} == {"1", "2"}
    assert (sweep / "val_loss.png").stat().st_size > 1000


def test_progress_bar_counts_optimizer_steps():
    from types import SimpleNamespace

    from moe_lm.run import StepProgressBar

    bar = StepProgressBar(leave=True)
    bar._trainer = SimpleNamespace(global_step=300, max_steps=800)
    assert bar._get_train_description(3).strip() == "Epoch 3, step 300/800"
