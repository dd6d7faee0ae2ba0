"""SIGTERM during training: the current batch finishes, last.ckpt is saved, the run exits 0; checkpoint.resume=auto
continues it."""

import signal
import subprocess
import sys
import time

import torch

def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_auto_resumes(tmp_path):
    args = [sys.executable, "-m", "moe_lm.train", "model=moe_tiny", "model.vocab_size=2048", "precision=fp32",
            "trainer.max_steps=100000", "trainer.progress_bar=false", "logger.csv=false", f"out_dir={tmp_path}",
            f"hydra.run.dir={tmp_path}/hydra", "checkpoint.resume=auto"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until training runs
        if "first batch" in line or time.time() > deadline:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "signal SIGTERM: saved" in out
    last = tmp_path / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step > 0
    done = subprocess.run(args[:-5] + ["trainer.max_steps=" + str(step + 3), "trainer.progress_bar=false",
                                       f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra", "checkpoint.resume=auto"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"resuming from {last}" in done.stdout
    assert torch.load(last, weights_only=True)["global_step"] == step + 3
