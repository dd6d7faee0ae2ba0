"""Token shards: idempotent, resumable after SIGKILL without duplicates or losses, split by document."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moe_lm.cli import compose
from moe_lm.data.shard_writer import prepare
from moe_lm.data.bpe import train_domain_tokenizer

DROP = [f"~data.domains.{d}" for d in ("code", "science", "legal", "web")]


def overrides(shared: Path, out: Path, tok: Path, budget: int = 300_000) -> list[str]:
    return ["data=domains", "data.source=local", f"data.local_root={shared}", "data.token_budget_range=[1000,50000000]",
            f"data.domains.math.token_budget={budget}", "data.domains.chat.token_budget=60000",
            f"prepare.out={out}", f"prepare.tokenizer={tok}", "prepare.checkpoint_every=32",
            "prepare.batch_documents=32", "prepare.val_fraction=0.05", *DROP]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory, shared_data) -> Path:
    cfg = compose(["data=domains", "data.source=local", f"data.local_root={shared_data}", "tokenizer.vocab_size=1000",
                   "tokenizer.sample_bytes_per_domain=100000"])
    tok, _ = train_domain_tokenizer(cfg.data, cfg.tokenizer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def read_docs(root: Path, split: str, eot: int = 0) -> list[tuple[int, ...]]:
    arr = np.fromfile(root / f"{split}.bin", dtype=np.uint16)
    starts = np.flatnonzero(arr == eot).tolist() + [len(arr)]
    return [tuple(arr[a + 1:b].tolist()) for a, b in zip(starts, starts[1:])]


def test_prepare_is_deterministic_idempotent_and_split_by_document(tmp_path, tok_path, shared_data):
    with pytest.warns(UserWarning, match=r"data\.domains\.chat: source databricks/databricks-dolly-15k ran out at 0 of"):
        metas = prepare(compose(overrides(shared_data, tmp_path / "a", tok_path)))  # dolly has no local sample
    dolly = metas["chat"]["sources"][1]
    assert dolly["exhausted"] and dolly["tokens"] == 0 and dolly["share"] == 18_000
    m = metas["math"]
    assert m["tokens"]["train"] + m["tokens"]["val"] >= 300_000 and m["tokens"]["val"] > 0
    assert m["dtype"] == "uint16" and m["expert"] == 0
    root = tmp_path / "a" / "math"
    train, val = read_docs(root, "train"), read_docs(root, "val")
    assert len(train) == m["documents"]["train"] and len(val) == m["documents"]["val"]
    assert not set(train) & set(val)  # no document in both splits
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    prepare(compose(overrides(shared_data, tmp_path / "a", tok_path)))  # finished domains are skipped
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before
    prepare(compose(overrides(shared_data, tmp_path / "b", tok_path)))  # same seed, same bytes
    for split in ("train", "val"):
        assert (root / f"{split}.bin").read_bytes() == (tmp_path / "b" / "math" / f"{split}.bin").read_bytes()


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path, tok_path, shared_data):
    budget = 1_500_000
    prepare(compose(overrides(shared_data, tmp_path / "ref", tok_path, budget)))
    cmd = [sys.executable, "-m", "moe_lm.prepare", *overrides(shared_data, tmp_path / "run", tok_path, budget)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "run" / "math" / "progress.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["consumed"][0] > 200:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-domain"
    math = tmp_path / "run" / "math"
    assert not (math / "meta.json").exists() and not (math / "train.bin").exists()  # partial is not final
    subprocess.run(cmd, check=True, capture_output=True)
    for split in ("train", "val"):
        assert (math / f"{split}.bin").read_bytes() == (tmp_path / "ref" / "math" / f"{split}.bin").read_bytes()
    ref = json.loads((tmp_path / "ref" / "math" / "meta.json").read_text())
    got = json.loads((math / "meta.json").read_text())
    assert got == ref
    assert not (math / "progress.json").exists()
