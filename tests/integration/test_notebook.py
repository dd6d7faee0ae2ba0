"""experiments/colab.ipynb executed top to bottom with nbclient on CPU: its parameters cell switched to moe_tiny and
the local sample data (no Drive, no hub), and a disconnect simulated by killing the training process after its
first checkpoint, then re-running the train cell, which must resume. Fast tier, ~30 s."""

import csv
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the dev extra (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the dev extra (nbformat, nbclient)")

STEPS = 40
DOMAIN_BUDGETS = " ".join(f"data.domains.{d}.token_budget=30000" for d in
                          ("math", "code", "science", "legal", "chat", "web"))


def parameters_for_test(root: Path, shared: Path) -> str:
    return "\n".join([
        f'ROOT = "{root}"',
        f'DATA = "data=domains data.source=local paths.data_root={shared} data.token_budget_range=[1000,100000000] '
        f'{DOMAIN_BUDGETS} data.seq_len=32 data.batch_size=8 prepare.val_fraction=0.05"',
        'MODEL = "moe_tiny"',
        'PRECISION = "fp32"',
        'TOKENIZER = "tokenizer.vocab_size=1024 tokenizer.sample_bytes_per_domain=50000"',
        f'TRAIN = "model.vocab_size=1024 data.round_robin_steps=8 trainer.max_steps={STEPS} checkpoint.every_n_steps=2 '
        f'trainer.val_check_interval=20 trainer.log_every_n_steps=1 trainer.progress_bar=false"',
        "PROMPT = 'Question: what is {\"a\": 1}? It\\'s \"quoted\" — naïve'",
        'CODE_PROMPT = "def add(a, b):"',
    ])


def training_pids(run: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"moe_lm.train" in cmd and f"out_dir={run}".encode() in cmd:
            pids.append(int(proc.name))
    return pids


def kill_after_first_checkpoint(run: Path, killed: list[int]) -> None:
    """The disconnect: SIGKILL the training process once last.ckpt holds a step (Colab's runtime just dies)."""
    last, deadline = run / "checkpoints" / "last.ckpt", time.time() + 300
    while time.time() < deadline:
        if last.exists():
            try:
                step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
            except Exception:  # noqa: BLE001 - replaced while being read: try again
                continue
            if step >= 2:
                for pid in training_pids(run):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(step)
                return
        time.sleep(0.01)


def text_of(cell) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the training process through /proc (Linux)")
def test_the_colab_notebook_runs_top_to_bottom_and_resumes_after_a_disconnect(tmp_path, shared_data, repo_root):
    path = repo_root / "experiments" / "colab.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # nbformat 4.5: every cell has an id
    assert (nb.nbformat, nb.nbformat_minor) >= (4, 5) and all(c.get("id") for c in nb.cells)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells[params].source = parameters_for_test(tmp_path, shared_data)
    train = next(i for i, c in enumerate(nb.cells) if "python -m moe_lm.train" in c.source)
    run = tmp_path / "run1"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo_root)}})
    killed: list[int] = []
    # `!python` in a cell is the kernel's Python, as on Colab (not whatever `python` the test's PATH holds)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with client.setup_kernel(env=env):
        for i, cell in enumerate(nb.cells):
            if i == train:
                killer = threading.Thread(target=kill_after_first_checkpoint, args=(run, killed))
                killer.start()
                with pytest.raises(nbclient.exceptions.CellExecutionError, match="failed with exit status"):
                    client.execute_cell(cell, i)  # the killed command fails, and check() stops "Run all" there
                killer.join()
                assert killed, "the training run ended before it could be killed:\n" + text_of(cell)[-3000:]
                assert not (run / "checkpoints" / "final.ckpt").exists()
                client.execute_cell(cell, i)  # after the "disconnect": the same cell again
                assert "resuming from" in text_of(cell), text_of(cell)[-3000:]
            else:
                client.execute_cell(cell, i)
            out = text_of(cell)
            assert "error:" not in out and "Traceback" not in out, (i, out[-3000:])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS
    with open(run / "csv" / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(STEPS))  # before and after the disconnect, each step once
    shown = [o for o in nb.cells[train + 2].outputs if "image/png" in o.get("data", {})]
    assert len(shown) == 2  # the loss curve and the routing heatmap
    generated, inspected = text_of(nb.cells[-1]).split("token 0", 1)
    assert generated.strip() and inspected.count("| experts ") >= 2 * 5  # >= 5 prompt tokens x 2 MoE layers
    plan = text_of(next(c for c in nb.cells if "recipe_plan" in c.source))
    assert f"{STEPS} steps of" in plan and "passes" in plan  # what the run costs, before it runs
    scores = text_of(next(c for c in nb.cells if "python -m moe_lm.evaluate" in c.source))
    assert "own-expert hit rate" in scores and "(uniform 0.40, ceiling 1)" in scores  # read against chance
    everything = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert "\x1b[" not in everything and len(everything) < 40_000, len(everything)  # quiet: no cursor codes


def test_a_failing_command_stops_run_all(tmp_path, repo_root):
    """The notebook's check() after a shell command raises when the command failed, so "Run all" stops there."""
    nb = nbformat.read(repo_root / "experiments" / "colab.ipynb", as_version=4)
    setup = next(c for c in nb.cells if "def check()" in c.source)
    failing = nbformat.v4.new_code_cell("!python -m moe_lm.params model=moe_huge\ncheck()")
    after = nbformat.v4.new_code_cell("print('never reached')")
    nb.cells = [nbformat.v4.new_code_cell('ROOT = "/tmp"\nREPO = ""'), setup, failing, after]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo_root)}})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="failed with exit status 2"):
        with client.setup_kernel(env=env):
            for i, cell in enumerate(nb.cells):
                client.execute_cell(cell, i)
    assert "error: model: no option 'moe_huge'" in text_of(nb.cells[2]) and not nb.cells[3].get("outputs")
