"""Data throughput: prepare (MB/s of text) in one process and with a worker pool, byte-identical; and the
DomainDataModule's token rate.

    python experiments/bench_data.py [--local-root ../shared/data] [--budget 2000000] [--workers 2] [--reps 5]

The tokenizer is trained once on the same data (the default 32k BPE). Each round prepares every domain from
scratch into a fresh directory, once per case, interleaved:
- "1 process": prepare.workers=0 (the fast batch encoder, the tokenizer's threads on every core);
- "N workers": prepare.workers=N (spawned processes, one thread each, batches in order);
- "offset-tracking encoder": 1 process with tokenizers' encode_batch, which also computes character offsets
  (what prepare used before), for reference.
The shard files of every case are compared byte for byte.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchlib import arguments, device_name, interleaved, summarise, table, write_json
from moe_lm.cli import compose
from moe_lm.data import encoding
from moe_lm.data.bpe import train_domain_tokenizer
from moe_lm.data.shard_writer import prepare
from moe_lm.data.shards import DomainDataModule

DOMAINS = ["math", "code", "science", "legal", "chat", "web"]


def offset_tracking_encode(tok, docs):
    return [np.asarray(e.ids, dtype=np.uint32) for e in tok.encode_batch(docs)], [len(d.encode()) for d in docs]


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.bin")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--local-root", default="../shared/data")
    ap.add_argument("--budget", type=int, default=2_000_000, help="tokens per domain")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    cfg = compose(["data=domains", "data.source=local", f"data.local_root={args.local_root}",
                   "data.token_budget_range=[1000,50000000]", *[f"data.domains.{d}.token_budget={args.budget}" for d in DOMAINS],
                   f"prepare.tokenizer={work}/tokenizer.json", "data.seq_len=256", "data.batch_size=8"])
    tok, _ = train_domain_tokenizer(cfg.data, cfg.tokenizer)
    tok.save(str(work / "tokenizer.json"))
    results: dict[str, dict] = {}

    def case(name: str, workers: int, encode_fn=None):
        results[name] = {"runs": []}

        def run():
            c = copy.deepcopy(cfg)
            out = work / f"run_{len(results[name]['runs'])}_{name.replace(' ', '_')}"
            c.prepare.out, c.data.shards, c.prepare.workers = str(out), str(out), workers
            with mock.patch.object(encoding, "encode", encode_fn or encoding.encode):
                metas = prepare(c)
            results[name]["runs"].append(digest(out))
            results[name]["text_bytes"] = sum(m["text_bytes"] for m in metas.values())
            results[name]["tokens"] = sum(sum(m["tokens"].values()) for m in metas.values())
            shutil.rmtree(out)
        return run

    cases = {"1 process": case("1 process", 0), f"{args.workers} workers": case(f"{args.workers} workers", args.workers),
             "offset-tracking encoder": case("offset-tracking encoder", 0, offset_tracking_encode)}
    times = interleaved(cases, args.reps, args.warmup, torch.device("cpu"))
    summary = summarise(times, "offset-tracking encoder")
    mb = results["1 process"]["text_bytes"] / 1e6
    identical = len({d for r in results.values() for d in r["runs"]}) == 1
    print(f"device: {device_name(torch.device('cpu'))}; prepare of {len(DOMAINS)} domains, "
          f"{mb:.1f} MB of text, {results['1 process']['tokens']:,} tokens; {args.reps} interleaved rounds after "
          f"{args.warmup} warm-up\n")
    print(table(summary, "offset-tracking encoder"))
    print("\n| case | MB/s of text (median) |\n|---|---:|")
    for name, s in summary.items():
        s["mb_per_s"] = mb / s["median_s"]
        print(f"| {name} | {s['mb_per_s']:.2f} |")
    print(f"\nevery run's shards byte-identical: {identical}")
    c = copy.deepcopy(cfg)
    c.prepare.out = c.data.shards = str(work / "shards")
    prepare(c)
    it = iter(DomainDataModule(c.data, seed=0).train_dataloader())
    next(it)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0:
        n += next(it)["input_ids"].numel()
    loader_tok_s = n / (time.perf_counter() - t0)
    print(f"DomainDataModule (batch 8 x 256, workers 0): {loader_tok_s:,.0f} tokens/s")
    write_json(args.json, {"text_mb": mb, "summary": summary, "byte_identical": identical,
                           "datamodule_tokens_per_s": loader_tok_s})
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
