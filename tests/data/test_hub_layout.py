"""The hub path of `prepare`, run offline: a local folder laid out like the hub repos of conf/data/domains.yaml
(a card with configs, parquet and compressed JSON lines, a file glob, another revision), holding records of
../shared/data, streamed by the same `datasets` calls that hub ids take (data.hub_mirror). Its shards must equal
those that data.source=local writes from the same records."""

import dataclasses
import json
import lzma
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_lm.cli import compose
from moe_lm.data.shard_writer import prepare
from moe_lm.data.sources import hub_load_args, mirror_repo

N_RECORDS = 30
DOMAINS = ("math", "legal")


def records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(N_RECORDS), f)]


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_jsonl_xz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))


def build_mirror(shared: Path, registry, mirror: Path, local: Path) -> None:
    """Each source of DOMAINS: its first records, once as the hub repo would hold them and once as a local file."""
    for name in DOMAINS:
        for src in registry.domains[name].sources:
            rows = records(shared / src.local_file)
            (local / src.local_file).parent.mkdir(parents=True, exist_ok=True)
            (local / src.local_file).write_text("".join(json.dumps(r) + "\n" for r in rows))
            repo = mirror_repo(src, str(mirror))
            pattern = src.data_files
            if not pattern:  # a repo read by config name: its card maps the config to its files
                repo.mkdir(parents=True, exist_ok=True)
                (repo / "README.md").write_text(
                    f"---\nconfigs:\n- config_name: {src.config}\n  data_files:\n  - split: {src.split}\n"
                    f"    path: {src.config}/{src.split}-*.parquet\n---\n")
                write_parquet(repo / src.config / f"{src.split}-00000-of-00001.parquet", rows)
            elif pattern.endswith(".parquet"):
                write_parquet(repo / pattern.replace("*", "0000", 1).replace("*", "train", 1), rows)
            else:
                write_jsonl_xz(repo / pattern.replace("*", "00000"), rows)


def test_prepare_streams_a_hub_layout_through_datasets_and_matches_local(shared_data, tmp_path):
    from moe_lm.data.bpe import save_tokenizer, train_bpe

    base = compose(["data=domains", "data.seq_len=16", "data.token_budget_range=[1,1000000000]",
                    "prepare.val_fraction=0.1"])
    mirror, local = tmp_path / "mirror", tmp_path / "local"
    build_mirror(shared_data, base.data, mirror, local)
    sources = [s for n in DOMAINS for s in base.data.domains[n].sources]
    kinds = {hub_load_args(s, str(mirror))[0][0] if s.data_files else "config" for s in sources}
    assert kinds == {"config", "parquet", "json"} and any(s.revision for s in sources)
    tok_path = tmp_path / "tok" / "tokenizer.json"
    save_tokenizer(train_bpe(["the court of math 12 + 3 = 15 patent claims"] * 20, 300), {}, tok_path)

    def run(out: Path, **data) -> dict:
        domains = {n: dataclasses.replace(base.data.domains[n], token_budget=10 ** 6) for n in DOMAINS}
        cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, domains=domains, **data),
                                  prepare=dataclasses.replace(base.prepare, out=str(out), tokenizer=str(tok_path)))
        return prepare(cfg)

    hub = run(tmp_path / "hub", source="hub", hub_mirror=str(mirror))
    from_local = run(tmp_path / "local_shards", source="local", local_root=str(local))
    for name in DOMAINS:
        assert hub[name]["documents"] == from_local[name]["documents"] and hub[name]["documents"]["train"] > 0
        for split in ("train", "val"):
            a = np.fromfile(tmp_path / "hub" / name / f"{split}.bin", dtype=hub[name]["dtype"])
            b = np.fromfile(tmp_path / "local_shards" / name / f"{split}.bin", dtype=from_local[name]["dtype"])
            assert a.size > 0 and np.array_equal(a, b), (name, split)


def test_a_missing_mirror_copy_is_named(tmp_path):
    from moe_lm.config import SourceConfig
    from moe_lm.data.sources import iter_hub

    with pytest.raises(FileNotFoundError, match=r"data.hub_mirror: no copy of openai/gsm8k"):
        list(iter_hub(SourceConfig(hub_id="openai/gsm8k", config="main"), mirror=str(tmp_path)))
