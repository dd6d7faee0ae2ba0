"""The held-out split: whole groups (a code file's repository, an oasst1 conversation tree, else the document)
kept out of train, val and the tokenizer's sample, chosen by a seeded hash of the group; scored by
`evaluate data.split=heldout`. Hand-made records with the upstream schemas, so no ../shared is needed."""

import json
from pathlib import Path

import numpy as np
import pytest

from moe_lm.cli import compose
from moe_lm.config import ConfigError
from moe_lm.data.bpe import domain_documents, train_bpe
from moe_lm.data.formatters import format_records
from moe_lm.data.shard_writer import is_heldout, prepare

REPOS = [f"owner{i}/repo{i}" for i in range(12)]
TREES = [f"tree-{i}" for i in range(30)]


def write_sources(root: Path) -> list[str]:
    """code (12 repositories x 6 files) and chat (30 oasst1 trees of 3 messages) in their upstream schemas."""
    code, chat = [], []
    for r in REPOS:
        for f in range(6):
            body = "".join(f"def f{r[-1]}_{f}_{k}(x):\n    return x * {k} + {f}\n" for k in range(8))
            code.append({"repo_name": r, "path": f"/pkg/mod{f}.py", "content": f"# {r} file {f}\n" + body})
    for t in TREES:
        chat += [{"message_id": f"{t}-a", "parent_id": None, "message_tree_id": t, "role": "prompter",
                  "text": f"What is {t} about? Tell me more about number {t[-1]}."},
                 {"message_id": f"{t}-b", "parent_id": f"{t}-a", "message_tree_id": t, "role": "assistant",
                  "text": f"It is about {t}, the tree with {len(t)} letters.", "rank": 0},
                 {"message_id": f"{t}-c", "parent_id": f"{t}-a", "message_tree_id": t, "role": "assistant",
                  "text": f"A worse answer for {t}.", "rank": 1}]
    for name, rows in (("code/code.jsonl", code), ("chat/oasst1.jsonl", chat)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["content"] for r in code] + [m["text"] for m in chat]


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    tok = train_bpe(write_sources(src), 800)
    tok.save(str(tmp_path / "tokenizer.json"))
    base = ["data=domains", "data.source=local", f"data.local_root={src}", "data.seq_len=16",
            "data.token_budget_range=[100,100000000]", f"prepare.tokenizer={tmp_path / 'tokenizer.json'}",
            "prepare.batch_documents=8", "prepare.checkpoint_every=8", "prepare.val_fraction=0.1",
            "~data.domains.math", "~data.domains.science", "~data.domains.legal", "~data.domains.web",
            "data.domains.code.sources=[{formatter: code, local_file: code/code.jsonl}]",
            "data.domains.chat.sources=[{formatter: oasst1, local_file: chat/oasst1.jsonl}]"]

    def cfg(out: str, *more: str):
        return compose(base + [f"prepare.out={tmp_path / out}", *more])

    return cfg, tok


def repo_of(doc: str) -> str:
    """The repository of a formatted code file (its `# repo/path` header line)."""
    return "/".join(doc.split("\n")[0].removeprefix("# ").split("/")[:2])


def docs(root: Path, split: str, tok) -> list[str]:
    ids = np.fromfile(root / f"{split}.bin", dtype=np.uint16).tolist()
    return [d for d in tok.decode(ids, skip_special_tokens=False).split("<|endoftext|>") if d]


def test_whole_repositories_and_trees_are_kept_apart(setup):
    cfg, tok = setup
    held = ["prepare.heldout_fraction=0.3", "prepare.heldout_tokens=100000"]
    metas = prepare(cfg("a", "data.domains.code.token_budget=2000", "data.domains.chat.token_budget=500", *held))
    c = cfg("a", *held)
    root = Path(c.prepare.out)
    want_repos = {r for r in REPOS if is_heldout("code", r, c.seed, 0.3)}
    assert 0 < len(want_repos) < len(REPOS)
    held_repos = {repo_of(d) for d in docs(root / "code", "heldout", tok)}
    trained = {repo_of(d) for s in ("train", "val") for d in docs(root / "code", s, tok)}
    assert held_repos == want_repos  # every held-out repository, read past the train/val budget to find them
    assert not held_repos & trained  # none of their files in train or val
    assert metas["code"]["heldout"]["fraction"] == 0.3 and metas["code"]["tokens"]["heldout"] > 0
    # a repository's files are all held out together: 6 per repository
    assert len(docs(root / "code", "heldout", tok)) == 6 * len(want_repos)
    want_trees = {t for t in TREES if is_heldout("chat", t, c.seed, 0.3)}
    held_chat = docs(root / "chat", "heldout", tok)
    assert sorted(d.split("What is ")[1].split(" about")[0] for d in held_chat) == sorted(want_trees)
    assert not any(t + " about" in d for s in ("train", "val") for d in docs(root / "chat", s, tok) for t in want_trees)
    # the same rule and seed give the same bytes; a finished domain with another rule is refused
    prepare(cfg("b", "data.domains.code.token_budget=2000", "data.domains.chat.token_budget=500", *held))
    for split in ("train", "val", "heldout"):
        assert (root / "code" / f"{split}.bin").read_bytes() == (root.parent / "b" / "code" / f"{split}.bin").read_bytes()
    with pytest.raises(ConfigError, match="held-out split"):
        prepare(cfg("a", "data.domains.code.token_budget=2000", "data.domains.chat.token_budget=500",
                    "prepare.heldout_fraction=0.5", "prepare.heldout_tokens=100000"))


def test_the_held_out_share_is_capped_and_the_tokenizer_sample_leaves_it_out(setup):
    cfg, tok = setup
    c = cfg("a", "data.domains.code.token_budget=2000", "data.domains.chat.token_budget=500",
            "prepare.heldout_fraction=0.5", "prepare.heldout_tokens=300")
    metas = prepare(c)
    for name in ("code", "chat"):
        assert 300 <= metas[name]["tokens"]["heldout"] < 300 + 400  # stops at the first document past the cap
    kept = lambda d, key: is_heldout(d, key, c.seed, 0.5)
    sample = list(domain_documents(c.data, "code", 10 ** 9, kept))
    assert {repo_of(s) for s in sample} == {r for r in REPOS if not kept("code", r)}
    assert len(list(domain_documents(c.data, "code", 10 ** 9))) == 6 * len(REPOS)


def test_group_keys_come_from_the_schema():
    code = [{"repo_name": "a/b", "path": "x.py", "content": "1"}, {"content": "2"}]
    assert [k for k, _ in format_records("code", code, keyed=True)] == ["a/b", "2"]  # no repository: the document
    (key, doc), = format_records("gsm8k", [{"question": "q", "answer": "a"}], keyed=True)
    assert key == doc == "Question: q\nAnswer: a"
    rows = [{"message_id": "m", "parent_id": None, "message_tree_id": "T", "role": "prompter", "text": "hi"},
            {"message_id": "n", "parent_id": "m", "message_tree_id": "T", "role": "assistant", "text": "yo"}]
    assert [k for k, _ in format_records("oasst1", rows, keyed=True)] == ["T"]


def test_a_held_out_fraction_needs_tokens_and_evaluate_names_a_missing_split(tmp_path):
    with pytest.raises(ConfigError, match="prepare.heldout_tokens"):
        compose(["data=domains", "prepare.heldout_fraction=0.1"])
    with pytest.raises(ConfigError, match="prepare.heldout_fraction"):
        compose(["data=domains", "prepare.heldout_fraction=1.5", "prepare.heldout_tokens=10"])
    from moe_lm.eval.heldout import shard_streams

    (tmp_path / "math").mkdir()
    np.zeros(10, dtype=np.uint16).tofile(tmp_path / "math" / "val.bin")
    (tmp_path / "math" / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokens": {"train": 0, "val": 10}}))
    with pytest.raises(ConfigError, match="data.split: .* was prepared without a held-out split"):
        shard_streams(tmp_path, [], None, split="heldout")
