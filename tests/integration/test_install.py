"""A non-editable install (a wheel) finds its configs and resources through the package, from any directory."""

import shutil
import subprocess
import sys


def test_wheel_runs_from_another_directory(tmp_path, repo_root):
    src, wheel_dir, target, cwd = (tmp_path / n for n in ("src", "wheel", "site", "elsewhere"))
    cwd.mkdir()
    # a copy of the sources: setuptools writes build/ and *.egg-info beside them
    shutil.copytree(repo_root, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "multirun", "outputs", "build",
                                                                  "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir),
                    str(src)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("moe_lm-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    probe = ("import moe_lm.cli as c; cfg = c.compose(['+experiment=overfit_100_lines']); "
             "print(c.__file__); print(c.conf_dir()); print(cfg.data.path); print(open(cfg.data.path).readline()[:9])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in out[:3]), out  # the installed copy, not the checkout
    assert out[3] == "Few-shot "
    table = subprocess.run([sys.executable, "-m", "moe_lm.params", "model=moe_tiny"], cwd=cwd, env=env, check=True,
                           capture_output=True, text=True).stdout
    assert "routed_expert_4" in table
