"""Every bad input a user can give, table-driven across the commands: `error: <key or path>: <what>` on stderr, exit
status 2, no traceback; `--debug` shows the traceback instead. Commands run in process through their `cli()`
(what `python -m` calls); training runs as a subprocess, as users start it."""

import importlib
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch

from moe_lm.cli import DEBUG_VAR
from moe_lm.config import ConfigError


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bad_utf8.txt").write_bytes(b"caf\xe9 au lait\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "not_a.ckpt").write_text('{"not": "a checkpoint"}')
    (tmp_path / "sweep" / "run0").mkdir(parents=True)
    (tmp_path / "sweep" / "run0" / "result.json").write_text('{"steps": 3,')
    return tmp_path


CASES = [  # command, arguments ({t} = the files fixture's directory), what the error line must name
    ("generate", [], "ckpt: "),
    ("generate", ["ckpt=/nonexistent.ckpt"], "ckpt: no such checkpoint"),
    ("generate", ["ckpt={t}/not_a.ckpt"], "ckpt: {t}/not_a.ckpt is not a readable checkpoint"),
    ("generate", ["ckpt=x.ckpt", "top_p=2"], "top_p: must be in (0, 1]"),
    ("generate", ["ckpt=x.ckpt", "temperature=inf"], "temperature: must be a finite number"),
    ("generate", ["ckpt=x.ckpt", "not_a_key=1"], "not_a_key"),
    ("generate", ["ckpt=x.ckpt", "prompt_file={t}/empty.txt"], "prompt_file: {t}/empty.txt is empty"),
    ("generate", ["ckpt={t}/not_a.ckpt", "device=cuda"] if not torch.cuda.is_available() else ["ckpt=x.ckpt", "device=tpu"],
     "device: "),
    ("inspect", ["ckpt=/nonexistent.ckpt"], "ckpt: no such checkpoint"),
    ("report", [], "dir"),
    ("report", ["dir=/nonexistent"], "dir: no result.json below /nonexistent"),
    ("report", ["dir={t}/sweep"], "dir: {t}/sweep/run0/result.json is not a result.json written by moe_lm.train"),
    ("params", ["model.top_k=9"], "model.top_k"),
    ("params", ["bogus=1"], "bogus"),
    ("params", ["+trainer.nodes=2"], "trainer.nodes: not a setting of this command"),
    ("params", ["+strategy.num_nodes=2"], "strategy.num_nodes: already a setting; write strategy.num_nodes=VALUE without +"),
    ("params", ["optimizer.lr=nan"], "optimizer.lr: must be a finite number"),
    ("params", ["scheduler.min_lr_ratio=inf"], "scheduler.min_lr_ratio"),
    ("params", ["trainer.val_check_interval=0"], "trainer.val_check_interval: must be > 0"),
    ("params", ["trainer.accelerator=gpus"], "trainer.accelerator: must be one of"),
    ("prepare", ["prepare.tokenizer=/nonexistent.json", "data=domains"], "prepare.tokenizer: no such file"),
    ("prepare", ["data=domains", "prepare.batch_documents=0"], "prepare.batch_documents: must be > 0"),
    ("prepare", [], "data: prepare needs the multi-domain data group"),
    ("tokenizer", [], "data"),
    ("tokenizer", ["tokenizer.vocab_size=-5"], "tokenizer.vocab_size: must be >= 512"),
    ("plan", ["gpu=K80"], "gpu: unknown device 'K80'"),
    ("plan", ["mfu=2"], "mfu: must be in (0, 1]"),
]


@pytest.mark.parametrize("command,args,named", CASES, ids=[f"{c}-{' '.join(a) or 'none'}" for c, a, _ in CASES])
def test_bad_input_is_one_named_error_line_and_exit_2(command, args, named, files, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_VAR, raising=False)
    cli = importlib.import_module(f"moe_lm.{command}").cli
    with pytest.raises(SystemExit) as done:
        cli([a.format(t=files) for a in args])
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert named.format(t=files) in err, err


def test_debug_shows_the_traceback_instead(capsys, monkeypatch):
    from moe_lm.params import cli

    monkeypatch.delenv(DEBUG_VAR, raising=False)
    with pytest.raises(ConfigError, match="model.top_k"):
        cli(["model.top_k=9", "--debug"])
    assert os.environ.pop(DEBUG_VAR) == "1"


TRAIN_TYPOS = [  # what Hydra alone reports in 4-13 lines with exit 1
    (["model.n_expertz=4"], "model.n_expertz: not a setting of this command"),
    (["optimizer.lr=fast"], "optimizer.lr: Value 'fast'"),
    (["seed=abc"], "seed: Value 'abc'"),
    (["trainer.compile=maybe"], "trainer.compile: Value 'maybe' is not a valid bool"),
    (["model=moe_tinyy"], "model: no option 'moe_tinyy' (options: dense_100m,"),
    (["precision=fp8"], "precision: no option 'fp8'"),
    (["+optimizer.lr=0.1"], "optimizer.lr: already a setting; write optimizer.lr=VALUE without +"),
    (["+experiment=domain_tiny"], "experiment: no option 'domain_tiny'"),
    (["trainer.max_step=10"], "trainer.max_step: not a setting of this command"),
    (["+trainer.max_step=10"], "trainer.max_step: not a setting of this command"),
    (["model.rope_theta=-1"], "model.rope_theta: must be > 0"),
    (["-m", "model.n_layers=2,x"], "model.n_layers: Value 'x'"),  # a later value of a sweep
    (["-m", "+experiment=warm_start_ablation", "+arm=none,forcedd"], "arm: no option 'forcedd'"),
]


@pytest.mark.parametrize("args,named", TRAIN_TYPOS, ids=[" ".join(a) for a, _ in TRAIN_TYPOS])
def test_train_command_line_errors_are_one_line_and_exit_2(args, named, capsys, monkeypatch):
    from moe_lm.cli import check_command_line

    monkeypatch.delenv(DEBUG_VAR, raising=False)
    with pytest.raises(SystemExit) as done:
        check_command_line(args)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err, err


def test_sweep_jobs_check_each_value_once_and_leave_hydra_flags_out():
    from moe_lm.cli import sweep_jobs

    argv = ["-m", "--cfg", "job", "hydra.sweep.dir=/x", "seed=1,2", "model=moe_tiny", "+arm=a,b,c"]
    assert sweep_jobs(argv) == [["seed=1", "model=moe_tiny", "+arm=a"], ["seed=2", "model=moe_tiny", "+arm=a"],
                                ["seed=1", "model=moe_tiny", "+arm=b"], ["seed=1", "model=moe_tiny", "+arm=c"]]
    assert sweep_jobs(["seed=1,2"]) == [["seed=1,2"]]  # not a sweep without -m: Hydra reads it as it is
    assert sweep_jobs(["-m", "seed=range(1,3)"]) is None
    # a deleted key is deleted in every job checked (a domain left out of data.domains)
    assert sweep_jobs(["-m", "~data.domains.chat", "seed=1,2"]) == [["~data.domains.chat", "seed=1"],
                                                                     ["~data.domains.chat", "seed=2"]]


def test_a_train_typo_is_one_line_and_exit_2_from_the_process(tmp_path):
    proc = train(tmp_path, "trainer.max_step=10")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and err == "error: trainer.max_step: not a setting of this command (--help lists them)\n", err
    assert "+trainer.max_step" not in err + out  # Hydra's hint to append the key is not the project's rule


def train(tmp_path, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "moe_lm.train", "model=moe_tiny", "model.vocab_size=2048",
                             "precision=fp32", "trainer.progress_bar=false", f"hydra.run.dir={tmp_path}/hydra", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_train_names_bad_files_and_devices(files):
    cases = [(["data.path={t}/bad_utf8.txt"], "data.path: {t}/bad_utf8.txt is not UTF-8 text (byte 0xe9 at offset 3)"),
             (["data.path={t}/empty.txt"], "data.path: {t}/empty.txt has no non-empty lines")]
    if not torch.cuda.is_available():
        cases.append((["trainer.accelerator=cuda"], "trainer: `CUDAAccelerator` can not run on your system"))
    procs = [train(files / f"run{i}", *[a.format(t=files) for a in args], f"out_dir={files}/run{i}")
             for i, (args, _) in enumerate(cases)]  # in parallel: each pays the start-up once
    for proc, (_, named) in zip(procs, cases):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-2000:]
        assert "Traceback" not in err and named.format(t=files) in err, err[-2000:]


def test_a_full_disk_during_a_checkpoint_save_is_named_and_the_previous_one_survives(tmp_path):
    """RLIMIT_FSIZE makes every write past 200 KB fail as a full disk would (EFBIG instead of ENOSPC): the
    tokenizer and logs fit, the first checkpoint does not."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = train(tmp_path, "trainer.max_steps=2", f"out_dir={tmp_path}", "logger.csv=false", preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    assert f"error: {tmp_path}/checkpoints/last.ckpt: could not write the checkpoint (File too large;" in err, err[-2000:]
    assert "Traceback" not in err
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # no half-written file left behind
