"""Every command as a user runs it: one argument style, `--help`, one-line errors naming the key, exit status 2."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from moe_lm.cli import COMMAND_CONFIG, compose, split_text_args

COMMANDS = ["train", "generate", "inspect", "params", "tokenizer", "prepare", "report", "plan", "scaling", "evaluate",
            "export"]
TWO_LINES = ("the quick brown fox jumps over the lazy dog while seven wizards quietly juggle boxes.\n"
             "Question: pack my box with five dozen liquor jugs, then sphinx of black quartz judge my vow.\n")


def run(module: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"moe_lm.{module}", *args], capture_output=True, text=True, **kw)


HELP_SHOWS = {  # a key with its default that each command's --help must list
    "train": "max_steps: 1000", "generate": "max_new_tokens: 128", "inspect": "top: 5", "params": "n_layers: 12",
    "tokenizer": "vocab_size: 32000", "prepare": "val_fraction: 0.01", "report": "dir: ''", "plan": "hours: 10.0",
    "scaling": "bootstrap: 200", "evaluate": "stride: 0", "export": "max_shard_mb: 2000"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_its_keys_and_an_example(command):
    r = run(command, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"moe_lm.{command}" in r.stdout and HELP_SHOWS[command] in r.stdout
    example = next(ln for ln in r.stdout.splitlines() if ln.startswith("Example: "))
    words = shlex.split(example.removeprefix("Example: "))
    assert words[:3] == ["python", "-m", f"moe_lm.{command}"]
    overrides, _ = split_text_args(words[3:], ("prompt",))
    compose(overrides, COMMAND_CONFIG[command])  # the example is valid as printed
    if command in HELP_HIDES:  # a command sharing the training config lists only the settings it reads
        assert HELP_HIDES[command] not in r.stdout


HELP_HIDES = {"prepare": "n_layers:", "tokenizer": "max_steps:", "params": "max_steps:"}


@pytest.mark.parametrize("command,args,key", [
    ("generate", [], "ckpt"),
    ("generate", ["ckpt=/nonexistent.ckpt"], "ckpt"),
    ("generate", ["ckpt=x.ckpt", "top_p=2"], "top_p"),
    ("generate", ["ckpt=x.ckpt", "not_a_key=1"], "not_a_key"),
    ("inspect", ["ckpt=/nonexistent.ckpt"], "ckpt"),
    ("report", [], "dir"),
    ("report", ["dir=/nonexistent"], "dir"),
    ("params", ["model.top_k=9"], "model.top_k"),
    ("prepare", ["prepare.tokenizer=/nonexistent.json", "data=domains"], "prepare.tokenizer"),
    ("tokenizer", [], "data"),  # the overfit data group has no domains
    ("export", ["out=/tmp/x"], "ckpt"),
    ("export", ["ckpt=/nonexistent.ckpt", "out=/tmp/x"], "ckpt"),
    ("export", ["ckpt=x.ckpt", "out=/tmp/x", "dtype=int8"], "dtype"),
    ("train", ["init_from=/some/dir"], "init_from"),
    ("train", ["init_from=hf:/nonexistent/dir", "trainer.max_steps=1"], "init_from"),
])
def test_bad_input_is_one_line_naming_the_key(command, args, key):
    r = run(command, *args)
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and key in r.stderr and "Traceback" not in r.stderr


def test_train_reports_bad_input_naming_it(tmp_path):
    def train(*args):
        return run("train", *args, f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra")

    r = train("model.top_k=9")
    assert r.returncode == 2 and "model.top_k" in r.stderr
    r = train("data.path=/nonexistent/file.txt")
    assert r.returncode == 2 and "data.path" in r.stderr
    r = train("model.not_a_key=1")
    assert r.returncode != 0 and "not_a_key" in r.stderr
    r = train("optimizer.lr=inf")
    assert r.returncode == 2 and "optimizer.lr" in r.stderr
    r = train("optimizer.grad_clip=-1")
    assert r.returncode == 2 and "optimizer.grad_clip" in r.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing was started


def test_params_prints_the_table():
    r = run("params", "model=moe_tiny", check=True)
    for row in ("embeddings", "attention", "shared_experts", "router", "routed_expert_4", "norms", "total",
                "active_per_token", "train FLOPs/token"):
        assert row in r.stdout


@pytest.fixture
def trained(two_lines_run) -> Path:
    return two_lines_run / "run" / "checkpoints" / "final.ckpt"


def test_generate_and_inspect_take_the_prompt_verbatim(trained):
    out = run("generate", f"ckpt={trained}", "prompt=Question: pack my box", "temperature=0", "max_new_tokens=60",
              check=True).stdout
    assert out.startswith("Question: pack my box with five dozen liquor jugs, then sphinx of black quartz judge my vow.")
    assert run("generate", f"ckpt={trained}", "prompt=Question: pack my box", "temperature=0", "max_new_tokens=4",
               "echo=false", check=True).stdout.startswith(" with")  # the continuation alone
    out = run("generate", f"ckpt={trained}", "prompt=Question: pack my box", "temperature=0", "max_new_tokens=60",
              "stop=[liquor]", check=True).stdout
    assert out.rstrip("\n").endswith("five dozen ") and "jugs" not in out
    out = run("inspect", f"ckpt={trained}", "prompt=Question: pack", check=True).stdout
    tokens = [ln for ln in out.splitlines() if ln.startswith("token ")]
    assert out.startswith("model moe_tiny: ") and "parameters: " in out
    assert tokens[-1].endswith("'ack'") and any(t.endswith("':'") for t in tokens)
    assert out.count("| experts ") == len(tokens) * 2  # every token x 2 MoE layers


def test_two_run_sweep_yields_a_two_row_report(tmp_path, shared_data):
    sweep = tmp_path / "sweep"
    run("train", "-m", "+experiment=ablate_depth_seqlen", "model.n_layers=1,2", "data.seq_len=32", "trainer.max_steps=4",
        "trainer.val_check_interval=4", "trainer.progress_bar=false", f"paths.data_root={shared_data}",
        f"data.shards={tmp_path}/shards", f"prepare.out={tmp_path}/shards",
        f"prepare.tokenizer={tmp_path}/tok/tokenizer.json", f"hydra.sweep.dir={sweep}", f"hydra.run.dir={tmp_path}/hydra",
        check=True)
    out = run("report", f"dir={sweep}", check=True).stdout
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| run")]
    assert len(rows) == 2 and {r.split("|")[2].strip() for r in rows} == {"1", "2"}
    assert (sweep / "val_loss.png").stat().st_size > 1000


def test_lightning_errors_are_named_where_lightning_is_loaded_and_not_imported_otherwise(monkeypatch):
    """A command that never loads Lightning does not import it to report an error (seconds at every start)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from moe_lm.cli import describe, lightning_misconfiguration, user_errors

    assert MisconfigurationException in user_errors()
    assert describe(MisconfigurationException("no GPU here")) == "trainer: no GPU here"
    monkeypatch.delitem(sys.modules, "lightning.fabric.utilities.exceptions")
    assert not issubclass(MisconfigurationException, lightning_misconfiguration())
    code = ("import runpy, sys\nsys.argv = ['params', 'model.top_k=9']\ntry:\n"
            "    runpy.run_module('moe_lm.params', run_name='__main__')\nexcept SystemExit as e:\n"
            "    print(e.code, 'lightning' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["2", "False"], r.stderr[-2000:]
    assert "error: model.top_k:" in r.stderr


def test_warnings_come_out_as_one_plain_line(monkeypatch):
    import warnings

    from moe_lm.cli import plain_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    plain_warnings()
    msg = "data.domains.chat: source databricks/databricks-dolly-15k ran out at 0 of its 1,000 tokens"
    assert warnings.formatwarning(msg, UserWarning, "shard_writer.py", 191, "warnings.warn(...)") == f"warning: {msg}\n"
