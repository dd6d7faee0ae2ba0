"""Build the local lm-evaluation-harness task `moe_lm_domains` from the shared domain samples (no hub access).

    python experiments/make_lm_eval_task.py [--root ../shared/data] [--per-domain 40] [--max-chars 1500]

Writes moe_lm/resources/lm_eval/moe_lm_domains.jsonl: the first `--per-domain` formatted documents of each domain
(the formatting training uses, conf/data/domains.yaml), each cut at a line break before `--max-chars`, one JSON
record {"domain", "text"} per line, in domain order. The task YAMLs beside it score each domain's texts with
loglikelihood_rolling (bits per byte, byte and word perplexity).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moe_lm.cli import compose
from moe_lm.data.bpe import domain_documents

OUT = Path(__file__).resolve().parents[1] / "moe_lm" / "resources" / "lm_eval" / "moe_lm_domains.jsonl"


def cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    return head[:head.rfind("\n")] if "\n" in head[max_chars // 2:] else head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="../shared/data")
    ap.add_argument("--per-domain", type=int, default=40)
    ap.add_argument("--max-chars", type=int, default=1500)
    args = ap.parse_args()
    data = compose(["data=domains", f"paths.data_root={args.root}", "data.source=local"]).data
    rows = []
    for domain in data.domains:
        docs = domain_documents(data, domain, 10**9)
        texts = [cut(d, args.max_chars) for d, _ in zip(docs, range(args.per_domain * 4))]
        rows += [{"domain": domain, "text": t} for t in texts if t.strip()][:args.per_domain]
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} records to {OUT}")


if __name__ == "__main__":
    main()
