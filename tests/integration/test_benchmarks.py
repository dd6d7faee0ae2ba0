"""The benchmarks behind docs/performance.md run as `make bench` runs them (in their own process) and check what
they compare before timing it; the shared timing refuses fewer than 5 rounds. Tiny sizes: this is not a timing."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers", reason="the block benchmark compares with HF DeepseekV3MoE (a test extra)")


def test_block_benchmark_checks_hf_equality_and_writes_its_ratios(repo_root, tmp_path):
    out = tmp_path / "block.json"
    run = subprocess.run([sys.executable, "experiments/bench_moe_block.py", "--tokens", "64", "--warmup", "0",
                          "--json", str(out)], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["summary"]) >= {"moe loop", "moe grouped_mm", "moe bmm", "dense SwiGLU", "HF DeepseekV3MoE eager"}
    assert all(s["reps"] == 5 and s["min_s"] <= s["median_s"] <= s["max_s"] for s in result["summary"].values())
    assert result["summary"]["dense SwiGLU"]["ratio"] == 1.0
    assert result["moe_over_dense"] > 0 and result["hf_over_moe"] > 0


def test_fewer_than_five_rounds_are_refused(repo_root):
    run = subprocess.run([sys.executable, "experiments/bench_moe_block.py", "--tokens", "64", "--reps", "3"],
                         cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "at least 5 timed repetitions" in run.stderr
