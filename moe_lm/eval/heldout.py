"""Held-out evaluation per domain (the library behind `python -m moe_lm.evaluate task=lm`).

Documents: every source of every domain in conf/data/domains.yaml whose `local_file` exists under the given
directory, read and formatted exactly as `prepare` does (moe_lm/data/shard_writer.py), skipped records counted
by reason. Each domain's documents form one stream, `<|endoftext|> doc <|endoftext|> doc ...`, as in training.
Or the val or held-out split of prepared shards (`shard_streams`): the same streams, already tokenised (no bits
per byte).

Scoring: sliding windows of `context` tokens whose starts are `stride` apart; each window scores only the
targets no earlier window scored, so every token of the stream after the first is predicted exactly once, with
at least `context - stride` tokens of context once the stream is that long (the first window: what there is).
Per domain: loss (nats/token, the document separators included), perplexity, bits per byte = total nats /
ln 2 / UTF-8 bytes of the evaluated documents' text (so models with different tokenizers compare), and the
routing of the scored tokens: the domain x expert matrix, the specialisation scores and a heatmap.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from moe_lm.config import ConfigError, DomainsDataConfig
from moe_lm.model import MoETransformer


def domain_documents(registry: DomainsDataConfig, root: Path, names: list[str],
                     max_documents: int = 0) -> dict[str, dict[str, Any]]:
    """{domain: {"documents": [...], "skipped": {reason: n}, "files": [...]}} for the domains with a file under root."""
    from moe_lm.data.shard_writer import source_documents

    data = dataclasses.replace(registry, source="local", local_root=str(root))
    unknown = [n for n in names if n not in registry.domains]
    if unknown:
        raise ConfigError(f"data.domains: unknown domain(s) {unknown}; known: {list(registry.domains)}")
    found: dict[str, dict[str, Any]] = {}
    for name in names or list(registry.domains):
        domain = registry.domains[name]
        docs, skipped, files = [], {}, []
        for i, src in enumerate(domain.sources):
            if not src.local_file or not (root / src.local_file).is_file():
                continue
            files.append(src.local_file)
            sink = [skipped]
            for doc in source_documents(data, domain, i, sink):
                if max_documents and len(docs) >= max_documents:
                    break
                docs.append(doc)
        if files:
            found[name] = {"documents": docs, "skipped": skipped, "files": files}
    if not found:
        expected = sorted({s.local_file for d in registry.domains.values() for s in d.sources if s.local_file})
        raise ConfigError(f"data.local_root: no known file under {root} (expected e.g. {', '.join(expected[:3])}; "
                          f"see conf/data/domains.yaml)")
    return found


def token_stream(tok, documents: list[str]) -> list[int]:
    """`<|endoftext|> doc <|endoftext|> doc ...`, as the training shards hold them."""
    from moe_lm.data.bpe import eot_id

    eot = eot_id(tok)
    return [t for enc in tok.encode_batch(documents) for t in [eot] + enc.ids] if documents else []


def windows(n: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first scored target position) of each window over a stream of n tokens (context >= 2).

    A window's inputs are [begin, end) and it scores the targets [first, end). The next window starts `stride`
    later, but never after the last scored position's input, so no target falls between two windows."""
    begin, scored_to = 0, 1  # target positions below scored_to are done; position 0 is never a target
    while scored_to < n:
        end = min(begin + context, n)
        yield begin, end, scored_to
        scored_to = end
        begin = min(begin + stride, end - 1)


@torch.no_grad()
def score_stream(model: MoETransformer, ids: list[int], context: int, stride: int, batch_size: int,
                 precision: str = "fp32", progress=None, vocab: bool = False) -> dict[str, Any]:
    """Sum of target NLLs (nats), number of targets, and (L, E) routed-slot counts of the scored inputs' tokens,
    plus (L, E) counts of their top-1 expert (the highest-weighted, as in training's routing monitor); with
    vocab=True also (V, E) slot counts per input token id, summed over the MoE layers."""
    from moe_lm.eval.routing import domain_expert_counts

    device = next(model.parameters()).device
    stream = torch.tensor(ids, dtype=torch.long)
    spans = list(windows(len(ids), context, stride))
    E = model.cfg.n_routed_experts
    nll, n, counts, top1 = 0.0, 0, None, None
    per_token = torch.zeros(model.cfg.vocab_size * E, dtype=torch.long) if vocab else None
    for i in range(0, len(spans), batch_size):
        group = spans[i:i + batch_size]
        width = max(e - b for b, e, _ in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        score = torch.zeros(len(group), width, dtype=torch.bool)  # input positions whose next token is scored
        for row, (b, e, first) in enumerate(group):
            x[row, : e - b] = stream[b:e]
            score[row, first - 1 - b: e - 1 - b] = True
        x, score = x.to(device), score.to(device)
        targets = x[:, 1:][score[:, :-1]]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            # the last input would predict past the window; the head is fused with the loss
            out = model(x[:, :-1], logits_at=score[:, :-1], targets=targets)
        nll += float(out.ce_sum)
        n += int(targets.numel())
        if out.topk_idx is not None:
            mask, dom = score[:, :-1], torch.zeros(len(group), dtype=torch.long, device=device)
            first_choice = out.topk_idx.gather(-1, out.topk_weight.argmax(-1, keepdim=True))  # (L, N, 1)
            c = domain_expert_counts(out.topk_idx, dom, 1, E, mask)[:, 0]  # (L, E)
            t = domain_expert_counts(first_choice, dom, 1, E, mask)[:, 0]
            counts, top1 = (c, t) if counts is None else (counts + c, top1 + t)
            if per_token is not None:  # bin token * E + expert of every scored token's slots, all layers
                keep = mask.reshape(-1)  # (N,)
                tok_ids = x[:, :-1].reshape(-1)[keep]  # (M,)
                chosen = out.topk_idx[:, keep]  # (L, M, K)
                per_token += torch.bincount((tok_ids[None, :, None] * E + chosen).flatten().cpu(),
                                            minlength=per_token.numel())
        if progress is not None:
            progress(len(group))
    result = {"nll": nll, "tokens": n, "counts": counts, "top1": top1}
    if per_token is not None:
        result["vocab"] = per_token.view(-1, E)
    return result


def text_info(docs: dict[str, Any]) -> dict[str, Any]:
    """What a domain's result reports of its input: files, documents, skipped records, UTF-8 bytes."""
    return {"files": docs["files"], "documents": len(docs["documents"]), "skipped": docs["skipped"],
            "bytes": sum(len(d.encode("utf-8")) for d in docs["documents"])}


def domain_result(name: str, info: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """info: text_info's keys; bytes None for token shards (no bits per byte then)."""
    loss = scored["nll"] / max(1, scored["tokens"])
    n_bytes = info["bytes"]
    return {"domain": name, "files": info["files"], "documents": info["documents"], "skipped": info["skipped"],
            "tokens": scored["tokens"], "bytes": n_bytes, "nll_nats": scored["nll"], "loss": loss,
            "ppl": math.exp(min(loss, 700.0)), "bpb": scored["nll"] / math.log(2) / max(1, n_bytes) if n_bytes is not None else None}


def shard_streams(root: Path, names: list[str], tok, max_tokens: int = 0, split: str = "val"
                  ) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]]]:
    """A split (val or heldout) of prepared shards (its first max_tokens tokens, 0 = all): ({domain: token ids},
    {domain: text_info-like info}). The shards must have been made with `tok` (their meta's tokenizer hash)."""
    import numpy as np

    from moe_lm.data.bpe import tokenizer_hash
    from moe_lm.data.manifest import check_shard_files, read_meta

    dirs = sorted(p.parent.name for p in root.glob("*/meta.json"))
    unknown = [n for n in names if n not in dirs]
    if not dirs or unknown:
        raise ConfigError(f"data.shards: {root} holds no prepared domain{' ' + str(unknown) if unknown else ''} "
                          f"(expected <dir>/<domain>/meta.json and {split}.bin, written by python -m moe_lm.prepare)")
    streams, infos = {}, {}
    for name in names or dirs:
        meta = read_meta(root / name / "meta.json", splits=())
        if split == "heldout" and not meta.get("heldout"):
            raise ConfigError(f"data.split: {root / name} was prepared without a held-out split; prepare again with "
                              f"prepare.heldout_fraction > 0 and prepare.heldout_tokens > 0 (docs/data.md)")
        meta = read_meta(root / name / "meta.json", splits=(split,))
        check_shard_files(root / name, meta, splits=(split,))
        if meta.get("tokenizer_hash") != tokenizer_hash(tok):
            raise ConfigError(f"data.shards: {root / name} was tokenised with tokenizer {meta.get('tokenizer_hash')}, "
                              f"the checkpoint's is {tokenizer_hash(tok)}")
        ids = np.fromfile(root / name / f"{split}.bin", dtype=meta["dtype"], count=max_tokens or -1).astype(np.int64)
        streams[name] = ids.tolist()
        infos[name] = {"files": [f"{name}/{split}.bin"], "documents": meta["documents"][split] if not max_tokens else 0,
                       "skipped": {}, "bytes": None}
    return streams, infos


def evaluate_domains(model: MoETransformer, streams: dict[str, list[int]], infos: dict[str, dict[str, Any]],
                     context: int, stride: int, batch_size: int, precision: str, vocab: bool = False,
                     label: str = "evaluating") -> tuple[list[dict[str, Any]], Optional[torch.Tensor],
                                                         Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Per-domain results, the (L, D, E) routed-slot and top-1 counts (None for a dense model), and with vocab=True
    the (V, E) slot counts per token id over all domains (else None)."""
    from rich.progress import Progress

    results, counts, top1, per_token = [], [], [], None
    total = sum(len(list(windows(len(s), context, stride))) for s in streams.values() if len(s) > 1)
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        for name, ids in streams.items():
            scored = (score_stream(model, ids, context, stride, batch_size, precision,
                                   lambda k: bar.advance(task, k), vocab) if len(ids) > 1
                      else {"nll": 0.0, "tokens": 0, "counts": None, "top1": None})
            results.append(domain_result(name, infos[name], scored))
            counts.append(scored["counts"])
            top1.append(scored["top1"])
            if scored.get("vocab") is not None:
                per_token = scored["vocab"] if per_token is None else per_token + scored["vocab"]
    if any(c is None for c in counts) or not counts:
        return results, None, None, per_token
    return results, torch.stack(counts, 1), torch.stack(top1, 1), per_token  # (L, D, E)


def overall(results: list[dict[str, Any]]) -> dict[str, Any]:
    nll, tokens = (sum(r[k] for r in results) for k in ("nll_nats", "tokens"))
    n_bytes = None if any(r["bytes"] is None for r in results) else sum(r["bytes"] for r in results)
    loss = nll / max(1, tokens)
    return {"domain": "all", "documents": sum(r["documents"] for r in results), "tokens": tokens, "bytes": n_bytes,
            "nll_nats": nll, "loss": loss, "ppl": math.exp(min(loss, 700.0)),
            "bpb": nll / math.log(2) / max(1, n_bytes) if n_bytes is not None else None}


def markdown(results: list[dict[str, Any]], total: dict[str, Any]) -> str:
    rows = ["| domain | documents | tokens | bytes | loss (nats/token) | perplexity | bits/byte | skipped |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in [*results, total]:
        skipped = ", ".join(f"{k}: {v}" for k, v in r.get("skipped", {}).items()) or "-"
        n_bytes, bpb = ("-", "-") if r["bytes"] is None else (f"{r['bytes']:,}", f"{r['bpb']:.4f}")
        rows.append(f"| {r['domain']} | {r['documents']:,} | {r['tokens']:,} | {n_bytes} | {r['loss']:.4f} | "
                    f"{r['ppl']:.2f} | {bpb} | {skipped} |")
    return "\n".join(rows)
