"""The issue's exact-resume recipe: 2N steps straight vs N steps, SIGKILL after the step-N checkpoint, resume to 2N."""

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

N = 10


def cmd(shared: Path, tmp: Path, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "moe_lm.train", "+experiment=domains_tiny", f"paths.data_root={shared}",
            f"data.shards={tmp}/shards", f"prepare.out={tmp}/shards", f"prepare.tokenizer={tmp}/tok/tokenizer.json",
            f"trainer.max_steps={2 * N}", "trainer.val_check_interval=null", "trainer.log_every_n_steps=1",
            "data.round_robin_steps=5", "trainer.progress_bar=false", f"out_dir={tmp}/{out}",
            f"hydra.run.dir={tmp}/{out}/hydra", *extra]


def losses(run: Path) -> dict[int, float]:
    rows = csv.DictReader(open(run / "csv" / "metrics.csv"))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted_run(tmp_path, shared_data):
    subprocess.run(cmd(shared_data, tmp_path, "straight"), check=True, capture_output=True)
    killed = subprocess.Popen(cmd(shared_data, tmp_path, "killed", f"checkpoint.every_n_steps={N}", "checkpoint.resume=auto"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last_path = tmp_path / "killed" / "checkpoints" / "last.ckpt"  # replaced atomically: safe to read while written
    deadline = time.time() + 120
    while killed.poll() is None and time.time() < deadline:
        if last_path.exists() and torch.load(last_path, weights_only=True)["global_step"] >= N:
            break
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    last = torch.load(last_path, weights_only=True)
    assert N <= last["global_step"] < 2 * N
    subprocess.run(cmd(shared_data, tmp_path, "killed", f"checkpoint.every_n_steps={N}", "checkpoint.resume=auto"), check=True,
                   capture_output=True)
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    for step in range(last["global_step"], 2 * N):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    wa = torch.load(tmp_path / "straight" / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "killed" / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)
