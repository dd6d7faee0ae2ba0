"""`python -m moe_lm.export` as a user runs it, on a trained checkpoint: the directory, its model card, every
command reading it back (generate, evaluate, train init_from=hf:DIR), and errors that write nothing."""

import csv
import json

import pytest

from tests.integration.test_cli import TWO_LINES, run


@pytest.fixture
def trained_sigmoid(two_lines_run, tmp_path):
    """test_cli's two-line moe_tiny run (DeepSeek-V3 routing: sigmoid, normalised top-k, aux-free bias), with this
    test's own output directory beside it."""
    (tmp_path / "run").symlink_to(two_lines_run / "run")
    (tmp_path / "lines.txt").symlink_to(two_lines_run / "lines.txt")
    return tmp_path


def test_export_writes_a_directory_every_command_reads_back(trained_sigmoid):
    tmp = trained_sigmoid
    ckpt, out = tmp / "run" / "checkpoints" / "final.ckpt", tmp / "hf"
    r = run("export", f"ckpt={ckpt}", f"out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["DeepseekV3ForCausalLM"]
    card = (out / "README.md").read_text()
    result = json.loads((tmp / "run" / "result.json").read_text())
    assert "DeepseekV3ForCausalLM" in card and "300 optimizer steps of 2 x" in card
    assert f"tokens ({result['tokens']:,} tokens)" in card  # the run's real count, not "about 0.0M"
    assert "/pytest-" not in card and "`lines.txt`: a text file" in card  # no path of the training machine
    assert f"| lines reproduced (greedy, from 8-token prompts) | {result['reproduced']} |" in card
    assert f"| train loss (full pass) | {result['train_loss_full_pass']:.4g} |" in card

    prompt = ["prompt=Question: pack my box", "temperature=0", "max_new_tokens=40"]
    from_ckpt = run("generate", f"ckpt={ckpt}", *prompt, check=True).stdout
    from_dir = run("generate", f"ckpt={out}", *prompt, check=True).stdout
    assert from_dir == from_ckpt and "five dozen liquor jugs" in from_dir

    again = run("export", f"ckpt={ckpt}", f"out={out}")  # out exists and is not empty: refused, untouched
    assert again.returncode == 2 and again.stderr.startswith("error: out:")
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith((".hf", "hf"))) == ["hf"]


@pytest.mark.slow
def test_training_starts_from_an_exported_directory(trained_sigmoid):
    tmp = trained_sigmoid
    out = tmp / "hf_init"
    run("export", f"ckpt={tmp / 'run' / 'checkpoints' / 'final.ckpt'}", f"out={out}", check=True)

    def first_loss(*extra):
        name = "init" if extra else "scratch"
        model = [] if extra else ["model=moe_tiny", "model.vocab_size=2048"]  # init: the directory's architecture
        r = run("train", "+experiment=overfit_100_lines", *model, "precision=fp32",
                f"data.path={tmp / 'lines.txt'}", "data.sampling=lines", "data.batch_size=2", "trainer.max_steps=2",
                "trainer.log_every_n_steps=1", "eval.reproduce_lines=0", "trainer.progress_bar=false",
                f"out_dir={tmp}/{name}", f"hydra.run.dir={tmp}/hydra_{name}", *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        rows = list(csv.DictReader(open(next((tmp / name / "csv").rglob("metrics.csv")))))
        return r.stdout, float(next(row["train/loss"] for row in rows if row.get("train/loss")))

    stdout, init_loss = first_loss(f"init_from=hf:{out}")
    assert "init_from: the architecture is" in stdout and "model.d_model=512->64" in stdout
    _, scratch_loss = first_loss()
    assert init_loss < 0.5 < 5.0 < scratch_loss  # the memorised lines, against a random init's ~ln(vocab)


def test_export_refuses_a_softmax_normalised_checkpoint_naming_the_key(tmp_path, capsys):
    import dataclasses

    import torch

    from moe_lm.cli import compose
    from moe_lm.data.bpe import train_bpe
    from moe_lm.export import cli
    from moe_lm.model import MoETransformer

    cfg = compose(["model=moe_tiny", "model.scoring=softmax", "model.norm_topk_prob=true"])
    tok = train_bpe(TWO_LINES.splitlines(), 300)
    state = {f"model.{k}": v for k, v in MoETransformer(cfg.model).state_dict().items()}
    torch.save({"state_dict": state, "moe_lm_config": dataclasses.asdict(cfg), "tokenizer_json": tok.to_str()},
               tmp_path / "x.ckpt")
    with pytest.raises(SystemExit) as exit_:
        cli([f"ckpt={tmp_path / 'x.ckpt'}", f"out={tmp_path / 'hf'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: model.norm_topk_prob:") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ckpt"]  # no directory, no temporary one


def test_a_full_disk_during_export_names_the_directory_and_leaves_nothing(tiny_ckpt, tmp_path):
    """RLIMIT_FSIZE makes the weights' write fail as a full disk would (EFBIG); a stale temporary directory of an
    export killed earlier is cleaned up by the next one."""
    import resource
    import signal
    import subprocess

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".hf.{dead.pid}.abcd.tmp").mkdir()  # left by an export killed part way
    r = run("export", f"ckpt={tiny_ckpt}", f"out={tmp_path / 'hf'}", preexec_fn=limit)
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path / 'hf'}: File too large (while writing it)\n", r.stderr
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory


@pytest.mark.slow
def test_the_tutorial_model_exports_and_transformers_loads_it(tmp_path, shared_data):
    """domains_tiny trains with the default (exportable) routing: the tutorial's model can be shared."""
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    import torch

    r = run("train", "+experiment=domains_tiny", f"paths.data_root={shared_data}", f"data.shards={tmp_path}/shards",
            f"prepare.out={tmp_path}/shards", f"prepare.tokenizer={tmp_path}/tok/tokenizer.json",
            "trainer.max_steps=20", "data.round_robin_steps=5", "trainer.val_check_interval=null",
            "trainer.progress_bar=false", f"out_dir={tmp_path}/run", f"hydra.run.dir={tmp_path}/hydra")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("export", f"ckpt={tmp_path}/run/checkpoints/final.ckpt", f"out={tmp_path}/hf")
    assert r.returncode == 0, r.stderr[-2000:]
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    from moe_lm.io.checkpoint import load_model

    ours, tok, _ = load_model(tmp_path / "run" / "checkpoints" / "final.ckpt")
    ids = torch.tensor([tok.encode("Question: what is 12 times 7?").ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)
