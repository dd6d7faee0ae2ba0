"""prepare under faults: a crash at any file operation resumes to the same bytes; a second prepare on the same
directory is refused; a domain of few long documents still gets a validation split. Local files only."""

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_lm.cli import compose
from moe_lm.config import ConfigError, DomainConfig, SourceConfig
from moe_lm.data import shard_writer
from moe_lm.data.bpe import train_bpe
from moe_lm.data.files import DirectoryLock
from moe_lm.data.shard_writer import prepare


class Crash(BaseException):
    """Not an Exception: nothing in prepare may catch it, as with a real kill."""


def write_sources(root: Path, n: int = 80) -> list[str]:
    """gsm8k- and math_dataset-schema JSONL files with n records each; returns all their text (for a tokenizer)."""
    texts = []
    for name, fmt in (("gsm8k", "Q{i}: what is {i} plus {j}?"), ("mathds", "Solve {j}*x = {i}.")):
        rows = [{"question": fmt.format(i=i, j=i % 7 + 1), "answer": f"The answer is {i + i % 7 + 1}. " * (1 + i % 5)}
                for i in range(n)]
        (root / "math").mkdir(parents=True, exist_ok=True)
        (root / "math" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        texts += [r["question"] + " " + r["answer"] for r in rows]
    return texts


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    tok = train_bpe(write_sources(src), 600)
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))

    base = compose(["data=domains", "data.source=local", f"data.local_root={src}", "data.seq_len=16",
                    "data.token_budget_range=[100,100000000]", f"prepare.tokenizer={tok_path}",
                    "prepare.checkpoint_every=8", "prepare.batch_documents=8"])

    def cfg(out: Path, budget: int = 3000, val_fraction: float = 0.1, heldout: float = 0.0):
        c = copy.deepcopy(base)
        c.prepare.out, c.prepare.val_fraction = str(out), val_fraction
        c.prepare.heldout_fraction, c.prepare.heldout_tokens = heldout, 600 if heldout else 0
        c.data.domains = {"math": DomainConfig(expert=0, token_budget=budget, sources=[
            SourceConfig(formatter="gsm8k", local_file="math/gsm8k.jsonl", weight=0.5),
            SourceConfig(formatter="math_dataset", local_file="math/mathds.jsonl", weight=0.5)])}
        return c

    return cfg


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "math").iterdir())}


def crash_at(monkeypatch, n: int) -> list[int]:
    """Raise Crash at the n-th file operation: a document append (after half its bytes), an fsync, a truncate,
    a rename or an unlink. Returns the op counter."""
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] == n:
            raise Crash

    def wrap(fn):
        def wrapped(*a, **k):
            tick()
            return fn(*a, **k)
        return wrapped

    for name in ("fsync", "truncate", "replace", "unlink"):
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    append = shard_writer.DomainWriter.append

    def torn_append(self, split, eot, ids):
        if count[0] + 1 == n:
            data = bytes((len(ids) + 1) * self.dtype.itemsize // 2)
            self.files[split].write(data)  # half a document reaches the file, then the process dies
        tick()
        append(self, split, eot, ids)

    monkeypatch.setattr(shard_writer.DomainWriter, "append", torn_append)
    return count


@pytest.mark.parametrize("heldout", [0.0, 0.3], ids=["train+val", "with_heldout"])
def test_a_crash_at_any_file_operation_resumes_to_the_same_bytes(tmp_path, setup, heldout):
    setup = functools.partial(setup, heldout=heldout)
    prepare(setup(tmp_path / "ref"))
    ref = outputs(tmp_path / "ref")
    assert set(ref) == {"meta.json", "train.bin", "val.bin"} | ({"heldout.bin"} if heldout else set())
    if heldout:  # the held-out split is filled (600 tokens), and read past the train/val budget to fill it
        meta = json.loads(ref["meta.json"])
        assert 600 <= meta["tokens"]["heldout"] < 700 and meta["heldout"]["fraction"] == 0.3
    with pytest.MonkeyPatch.context() as mp:
        total = crash_at(mp, 0)  # count only
        prepare(setup(tmp_path / "count"))
    n_ops = total[0]
    assert n_ops > 60  # appends, checkpoints (fsync, rename), the final renames and the unlink
    for n in range(1, n_ops + 1):
        out = tmp_path / f"crash{n}"
        with pytest.MonkeyPatch.context() as mp:
            crash_at(mp, n)
            with pytest.raises(Crash):
                prepare(setup(out))
        prepare(setup(out))  # the rerun, with working file operations
        assert outputs(out) == ref, f"crash at file operation {n} of {n_ops}"
        assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial"))


def test_a_partial_file_shorter_than_recorded_is_refused_not_padded(tmp_path, setup):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        crash_at(mp, 40)
        with pytest.raises(Crash):
            prepare(setup(out))
    progress = json.loads((out / "math" / "progress.json").read_text())
    assert progress["bytes"]["train"] > 0
    os.truncate(out / "math" / "train.bin.partial", progress["bytes"]["train"] - 2)
    with pytest.raises(ConfigError, match=r"prepare.out: .*train.bin.partial holds .* bytes but progress.json records"):
        prepare(setup(out))


def test_a_second_prepare_on_the_same_directory_is_refused_and_the_first_is_untouched(tmp_path, setup, repo_root):
    out = tmp_path / "out"
    (out / "math").mkdir(parents=True)
    (out / "math" / "train.bin.partial").write_bytes(b"first")
    with DirectoryLock(out, "prepare.out", "prepare"):  # the first prepare holds it (a flock conflicts per open file)
        with pytest.raises(ConfigError, match=rf"prepare.out: {out} is in use by another prepare \(pid {os.getpid()}\)"):
            prepare(setup(out))
        cmd = [sys.executable, "-m", "moe_lm.prepare", "data=domains", f"prepare.out={out}",
               f"prepare.tokenizer={tmp_path / 'tokenizer.json'}", "data.source=local"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, timeout=120)
        assert r.returncode == 2 and "is in use by another prepare" in r.stderr and "Traceback" not in r.stderr
    assert (out / "math" / "train.bin.partial").read_bytes() == b"first"
    prepare(setup(out))  # released: the rerun prepares (and replaces the stale partial from the recorded 0 bytes)
    assert (out / "math" / "meta.json").exists()


def test_a_domain_of_few_long_documents_still_gets_a_val_split(tmp_path, setup):
    meta = prepare(setup(tmp_path / "out", budget=1500, val_fraction=0.02))["math"]
    assert meta["tokens"]["val"] >= 0.02 * 1500  # the tail topped val up to its fraction
    assert meta["documents"]["val"] >= 1


def test_one_huge_record_is_skipped_by_name_and_never_fills_a_split(tmp_path, setup):
    cfg = setup(tmp_path / "out", budget=3000, val_fraction=0.1)
    cfg.prepare.max_document_tokens = 400
    path = Path(cfg.data.local_root) / "math" / "gsm8k.jsonl"
    huge = {"question": "What is the sum? " + "one plus two " * 2000, "answer": "#### 3"}  # ~4,000+ tokens
    path.write_text(json.dumps(huge) + "\n" + path.read_text())
    with pytest.warns(UserWarning, match=r"data.domains.math: 1 document\(s\) skipped as longer than "
                                         r"prepare.max_document_tokens \(400 tokens\)"):
        meta = prepare(cfg)["math"]
    assert meta["skipped"] == {"longer than prepare.max_document_tokens (400 tokens)": 1}
    assert meta["tokens"]["val"] <= 0.1 * 3000 + 400 and meta["tokens"]["train"] <= 3000 + 400  # budgets hold


def test_a_domain_whose_sources_give_nothing_fails_naming_it(tmp_path, setup):
    cfg = setup(tmp_path / "out")
    (Path(cfg.data.local_root) / "math" / "gsm8k.jsonl").write_text("")
    (Path(cfg.data.local_root) / "math" / "mathds.jsonl").write_text("not json\r{\"question\": 1}\r")
    with pytest.raises(ConfigError, match=r"data.domains.math: its sources gave no documents .*bad JSON"):
        prepare(cfg)


def test_a_pool_of_workers_writes_the_same_bytes_as_one_process(tmp_path, setup):
    one = setup(tmp_path / "one")
    prepare(one)
    pool = setup(tmp_path / "pool")
    pool.prepare.workers = 2
    prepare(pool)
    assert outputs(tmp_path / "pool") == outputs(tmp_path / "one")
