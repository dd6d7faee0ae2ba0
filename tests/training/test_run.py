"""End-to-end training through Lightning on tiny configs, in process."""

from pathlib import Path

import pytest
import torch

from moe_lm.cli import compose, compose_raw, conf_dir
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
    assert result["reproduced"] < 2  # 2 steps memorise nothing: the output says that the budget is why
    assert out[-2] == f"reproduced: {result['reproduced']}/2"  # what `make demo` ends with (10/10 there)
    assert out[-1].startswith(f"hint: {2 - result['reproduced']} of 2 lines not reproduced after 2 optimizer steps")
    i = out.index("scoring the training set in one full pass (2 samples) ...")  # a line before each long phase
    assert out[i + 1].startswith("train loss ") and out[i + 1].endswith("(full pass over the training set)")
    assert out[i + 2] == "decoding 2 lines greedily from their first 8 tokens ..."


def test_progress_outside_a_terminal_is_plain_lines(tmp_path, monkeypatch, capsys):
    from moe_lm.training import run

    monkeypatch.setattr(run, "interactive_terminal", lambda: False)  # a notebook, a pipe, a log file
    cfg = compose(TINY + ["trainer.max_steps=4", "trainer.progress_bar=true", "trainer.val_check_interval=2",
                          f"out_dir={tmp_path}"])
    train(cfg, tmp_path)
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "\r" not in out  # no cursor or colour codes
    steps = [line.split()[1] for line in out.splitlines() if line.startswith("step ") and "train/loss" in line]
    assert steps == ["1/4", "2/4", "3/4", "4/4"]  # each step once (max_steps // 20 rounds to every step)
    vals = [line for line in out.splitlines() if line.startswith("step ") and "val/loss" in line]
    assert [v.split(":")[0] for v in vals] == ["step 2", "step 4"]  # one line per validation


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
    last, final = ((tmp_path / "elsewhere" / n).stat() for n in ("last.ckpt", "final.ckpt"))
    assert (last.st_ino, last.st_nlink) == (final.st_ino, 2)  # one file on disk, not two copies
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_loss_curve_covers_the_whole_run_across_a_resume_with_val_per_domain(tmp_path, monkeypatch, fake_shards):
    calls = []
    monkeypatch.setattr("moe_lm.eval.plots.loss_curve", lambda train, val, path, title: calls.append((train, val, title)))
    from moe_lm.data.shards import DomainDataModule
    from moe_lm.training import run

    monkeypatch.setattr(run, "build_data", lambda cfg, out, tok=None: (None, DomainDataModule(cfg.data, cfg.seed)))  # no tokenizer
    common = TINY + ["data=domains", f"data.shards={fake_shards}", f"prepare.out={fake_shards}", "data.seq_len=16",
                     "trainer.val_check_interval=2", "data.val_batches_per_domain=1", f"out_dir={tmp_path}/run",
                     "checkpoint.resume=auto"]
    train(compose(common + ["trainer.max_steps=2"]), tmp_path / "run", "my_experiment")
    train(compose(common + ["trainer.max_steps=4"]), tmp_path / "run", "my_experiment")  # resumed at step 2
    history, val, title = calls[-1]
    assert title == "my_experiment: moe_tiny on domains (math, code, science, legal, chat, web)"
    assert [s for s, _ in history] == [1, 2, 3, 4]  # the steps before the resume too
    assert set(val) == {"val/loss"} | {f"val/loss/{d}" for d in ("math", "code", "science", "legal", "chat", "web")}
    assert [s for s, _ in val["val/loss/math"]] == [2, 4]


# The recipes (recipe_*.yaml) stream the hub into moe_100m on a GPU: tests/eval/test_recipe_plan.py composes each
# and checks its memory against its GPU; here every other experiment runs one step.
EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml") if not p.stem.startswith("recipe_"))


# add_domain_expert first trains the base it grows (tests/training/test_grow.py covers growing in the fast tier);
# specialisation_goals is warm_start_ablation on shards with a held-out split (tests/data/test_heldout_split.py)
SLOW_EXPERIMENTS = ("add_domain_expert", "specialisation_goals")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXPERIMENTS else n
                                  for n in EXPERIMENTS])
def test_every_experiment_composes_and_runs_fast_dev_run(name, tmp_path, request):
    overrides = [f"+experiment={name}", "trainer.fast_dev_run=true", "trainer.progress_bar=false",
                 "logger.csv=false", "logger.wandb=false", f"out_dir={tmp_path}"]
    if "domains" in compose_raw(overrides).data:  # unvalidated: add_domain_expert needs its init_from first
        shared = request.getfixturevalue("shared_data")  # skips, saying why, when ../shared/data is absent
        overrides += [f"paths.data_root={shared}", f"data.shards={tmp_path}/shards", f"prepare.out={tmp_path}/shards",
                      f"prepare.tokenizer={tmp_path}/tok/tokenizer.json"]
    if name == "add_domain_expert":  # grows a trained MoE: first one step of the base it grows, without chat
        base = [o for o in overrides if not o.startswith(("+experiment", "trainer.fast_dev_run", "out_dir"))]
        base += ["+experiment=warm_start_ablation", "+arm=forced", "~data.domains.chat", "model.n_routed_experts=4",
                 "trainer.max_steps=1", "trainer.val_check_interval=null", f"out_dir={tmp_path}/base"]
        train(compose(base), tmp_path / "base")
        overrides.append(f"init_from=ckpt:{tmp_path}/base/checkpoints/final.ckpt")
    cfg = compose(overrides)
    result = train(cfg, tmp_path)
    assert result["steps"] == 1
    assert torch.isfinite(torch.tensor(result["final_train_loss"]))


def test_wandb_logger_runs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(TINY + ["logger=wandb", "trainer.max_steps=2", f"out_dir={tmp_path}"])
    train(cfg, tmp_path)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_progress_bar_counts_and_titles_optimizer_steps(tmp_path, monkeypatch):
    from moe_lm.training import run
    from moe_lm.training.callbacks import StepProgressBar

    bars = []
    seen = []

    class Watch(StepProgressBar):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            task = self.progress.tasks[self.train_progress_bar_id]
            seen.append((task.description.strip(), task.completed, task.total))

    bars.append(Watch(leave=True))
    cfg = compose(TINY + ["trainer.max_steps=4", "trainer.accumulate_grad_batches=2", f"out_dir={tmp_path}",
                          "trainer.progress_bar=true"])
    monkeypatch.setattr(run, "StepProgressBar", lambda leave: bars[0])  # the run's own bar is the watched one
    monkeypatch.setattr(run, "interactive_terminal", lambda: True)  # a terminal, as the live bar is for
    train(cfg, tmp_path)
    assert len(seen) == 8  # one entry per micro-batch
    assert seen[-1] == ("step 4/4", 4, 4)  # the title follows the optimizer step, not the epoch start
    assert [s[0] for s in seen[:2]] == ["step 0/4", "step 1/4"]  # after micro-batch 1, then 2 (the first step)


def test_heldout_text_is_evaluated_at_every_validation(tmp_path):
    import csv
    import json

    root = tmp_path / "heldout"
    (root / "math").mkdir(parents=True)
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(3)]
    (root / "math" / "gsm8k.train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose(TINY + ["+experiment=overfit_100_lines", "trainer.max_steps=2", "trainer.val_check_interval=1",
                          f"eval.heldout_root={root}", "data.seq_len=32", "logger.csv=true", f"out_dir={tmp_path}/run"])
    result = train(cfg, tmp_path / "run", heldout_domains=compose(["data=domains"]).data)
    assert 0 < result["heldout/math/bpb"] < 20 and "heldout/code/bpb" not in result  # only domains with a file
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f) if r.get("heldout/math/bpb")]
    assert logged == [1, 2]  # at each validation


def test_upcycling_a_trained_dense_run_starts_where_it_ended(tmp_path):
    """dense_tiny learns two lines for 40 steps; moe_tiny with init_from=ckpt:its final.ckpt starts at the dense
    model's loss (its experts are copies of the dense MLPs, the tokenizer is the checkpoint's), far below a random
    init's ln(2048) = 7.6. (Exactness is tests/training/test_upcycle.py's.)"""
    data = tmp_path / "lines.txt"
    data.write_text(TWO_LINES)
    common = ["precision=fp32", "trainer.progress_bar=false", "logger.csv=false", "+experiment=overfit_100_lines",
              f"data.path={data}", "data.sampling=lines", "data.batch_size=2", "eval.reproduce_lines=0",
              "model.vocab_size=2048", "optimizer.lr=3e-3"]
    dense = compose(common + ["model=dense_tiny", "model.dense_intermediate_size=64", "trainer.max_steps=40",
                              f"out_dir={tmp_path}/dense"])
    dense_loss = train(dense, dense.out_dir)["final_train_loss"]
    moe = compose(common + ["model=moe_tiny", "trainer.max_steps=1", f"out_dir={tmp_path}/moe",
                            f"init_from=ckpt:{tmp_path}/dense/checkpoints/final.ckpt"])
    first = train(moe, moe.out_dir)["final_train_loss"]  # the loss of step 1's batch, before the update
    assert dense_loss < 5.0 and abs(first - dense_loss) < 0.5, (dense_loss, first)  # measured: 3.06 and 3.04


@pytest.mark.parametrize("impl, clean", [("grouped_mm", True), ("loop", False)])
def test_a_compiled_run_reports_its_graphs_and_graph_breaks(impl, clean, tmp_path, capsys):
    """trainer.compile=true prints and records what dynamo compiled: the compile-clean path one graph per model
    mode (training, then the full pass in evaluation) and no break, the loop a break in each MoE layer."""
    data = tmp_path / "lines.txt"
    data.write_text(TWO_LINES)
    cfg = compose(TINY + ["+experiment=overfit_100_lines", f"data.path={data}", "data.sampling=lines",
                          "trainer.max_steps=3", "eval.reproduce_lines=0", f"model.moe_impl={impl}",
                          "trainer.compile=true", "trainer.compile_backend=aot_eager", f"out_dir={tmp_path}/run"])
    report = train(cfg, cfg.out_dir)["compile"]
    torch._dynamo.reset()
    from moe_lm.training.torch_compile import report_line

    assert report_line(report) in capsys.readouterr().out
    if clean:
        assert report["graph_breaks"] == 0 and report["graphs"] == 1, report
        assert report_line(report) == "compile: 1 graph, 0 graph breaks"
    else:
        assert report["graph_breaks"] >= cfg.model.n_layers and report["graphs"] > cfg.model.n_layers, report
