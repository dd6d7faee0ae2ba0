"""SIGTERM during training: the current batch finishes, last.ckpt is saved, the run says where it stopped and exits
0 without final artefacts; checkpoint.resume=auto continues it, and the metrics of both parts are in one CSV,
each step once. A second run started on the same directory meanwhile is refused and leaves the first intact."""

import csv
import re
import signal
import subprocess
import sys
import time

import torch


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_auto_resumes(tmp_path):
    args = [sys.executable, "-m", "moe_lm.train", "model=moe_tiny", "model.vocab_size=2048", "precision=fp32",
            "trainer.progress_bar=false", "trainer.log_every_n_steps=1", f"out_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/hydra", "checkpoint.resume=auto"]
    proc = subprocess.Popen(args + ["trainer.max_steps=100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until training runs
        if "first batch" in line or time.time() > deadline:
            break
    second = subprocess.run(args + ["trainer.max_steps=5"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"error: out_dir: {tmp_path} is in use by another training run (pid {proc.pid})" in second.stderr
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step > 0 and "signal SIGTERM: saved" in out
    assert f"stopped by SIGTERM at step {step} of 100000" in out
    assert not (tmp_path / "checkpoints" / "final.ckpt").exists() and not (tmp_path / "model.safetensors").exists()
    done = subprocess.run(args + [f"trainer.max_steps={step + 3}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"resuming from {last}" in done.stdout
    assert re.search(r"^wall time \d+ min \d\d s since the command started$", done.stdout.splitlines()[-1])
    assert torch.load(last, weights_only=True)["global_step"] == step + 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["final.ckpt", "last.ckpt"]  # no last-v1.ckpt
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert logged == list(range(step + 3)), logged  # before and after the resume, each step once
    assert "max_steps" in (tmp_path / "csv" / "hparams.yaml").read_text()
    assert (tmp_path / "config.yaml").is_file()
