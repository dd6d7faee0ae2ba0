"""Data throughput: prepare (MB/s of text, tokens/s) and DomainDataModule (tokens/s), beside the moe_100m
train step's token rate measured in the same run.

    python experiments/bench_data.py [--local-root ../shared/data] [--budget 2000000] [--workers 0]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_lm.cli import compose
from moe_lm.data.shards import DomainDataModule
from moe_lm.model import MoETransformer
from moe_lm.data.shard_writer import prepare
from moe_lm.data.bpe import train_domain_tokenizer


def train_step_tokens_per_s(batch: int, seq: int, steps: int = 2) -> float:
    cfg = compose(["model=moe_100m"]).model
    model = MoETransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return batch * seq / (sum(times[1:]) / steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local-root", default="../shared/data")
    ap.add_argument("--budget", type=int, default=2_000_000, help="tokens per domain")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    domains = ["math", "code", "science", "legal", "chat", "web"]
    cfg = compose(["data=domains", "data.source=local", f"data.local_root={args.local_root}",
                   "data.token_budget_range=[1000,50000000]", *[f"data.domains.{d}.token_budget={args.budget}" for d in domains],
                   f"prepare.out={work}/shards", f"prepare.tokenizer={work}/tokenizer.json", f"data.shards={work}/shards",
                   "data.seq_len=256", "data.batch_size=8", f"data.num_workers={args.workers}"])
    tok, _ = train_domain_tokenizer(cfg.data, cfg.tokenizer)
    tok.save(str(work / "tokenizer.json"))
    t0 = time.perf_counter()
    metas = prepare(cfg)
    dt = time.perf_counter() - t0
    tokens = sum(sum(m["tokens"].values()) for m in metas.values())
    text_mb = sum(m["text_bytes"] for m in metas.values()) / 1e6
    dm = DomainDataModule(cfg.data, seed=0)
    it = iter(dm.train_dataloader())
    next(it)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0:
        n += next(it)["input_ids"].numel()
    dm_tok_s = n / (time.perf_counter() - t0)
    step_tok_s = train_step_tokens_per_s(8, 256)
    print(f"prepare: {text_mb:.1f} MB of text, {tokens:,} tokens in {dt:.1f} s = {text_mb / dt:.2f} MB/s, "
          f"{tokens / dt:,.0f} tokens/s")
    print("\n| stage | tokens/s | ratio to moe_100m train step |\n|---|---:|---:|")
    print(f"| prepare (format + tokenise + write) | {tokens / dt:,.0f} | {tokens / dt / step_tok_s:,.0f}x |")
    print(f"| DomainDataModule (batch 8 x 256, workers {args.workers}) | {dm_tok_s:,.0f} | {dm_tok_s / step_tok_s:,.0f}x |")
    print(f"| moe_100m train step (bf16, batch 8 x 256) | {step_tok_s:,.0f} | 1x |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
