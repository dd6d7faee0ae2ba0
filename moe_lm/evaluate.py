"""Evaluate a checkpoint: `python -m moe_lm.evaluate ckpt=PATH data.local_root=DIR [data.domains=[math,code]]`,
`python -m moe_lm.evaluate ckpt=PATH task=knockout data.shards=DIR`, or
`python -m moe_lm.evaluate ckpt=PATH task=gsm8k data.file=test.jsonl data.shots_file=train.jsonl [shots=8]`.

task=lm: held-out text of each domain (a directory laid out like paths.data_root, files and formatters from
conf/data/domains.yaml; or data.shards, the val or held-out split of prepared shards: data.split): loss, perplexity and bits per byte
per domain and overall, with sliding windows of `context` tokens `stride` apart, the routing of that text
(domain x expert matrix, specialisation scores, heatmap) and each expert's over-represented tokens
(moe_lm/eval/heldout.py, expert_vocab.py). task=knockout: the same text scored with each routed expert removed
from routing: the domain x expert matrix of loss rises and the causal specialisation ratios
(moe_lm/eval/knockout.py). task=gsm8k: k-shot exact-match accuracy with a 95% interval and every prediction
(moe_lm/eval/gsm8k.py). Writes eval.json (and eval.md, heatmaps, predictions.jsonl) under `out`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from moe_lm.cli import run_command
from moe_lm.config import ConfigError, EvaluateConfig
from moe_lm.data.files import write_text_atomic

EXAMPLE = ("python -m moe_lm.evaluate ckpt=runs/domains_tiny/checkpoints/final.ckpt "
           "data.shards=runs/domains_tiny/shards")  # the val split: held out from training by prepare


def out_dir(cfg: EvaluateConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    ckpt = Path(cfg.ckpt).resolve()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    suffix = "_heldout" if cfg.data.shards and cfg.data.split == "heldout" else ""
    return run / (("knockout" if cfg.task == "knockout" else "eval") + suffix)


def scoring_window(cfg: EvaluateConfig, model) -> tuple[int, int]:
    context = cfg.context or model.cfg.max_seq_len
    if context < 2 or context > model.cfg.max_seq_len:
        raise ConfigError(f"context: {context} must be in [2, {model.cfg.max_seq_len}] (the model's max_seq_len)")
    stride = cfg.stride or max(1, context // 2)
    if stride > context:
        raise ConfigError(f"stride: {stride} must be <= context ({context})")
    return context, stride


def domain_streams(cfg: EvaluateConfig, tok) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]], list]:
    """({domain: token ids}, {domain: what was read}, each domain's own expert) from data.local_root (text,
    formatted as prepare does) or data.shards (the val split of prepared shards)."""
    from moe_lm.cli import compose
    from moe_lm.eval import heldout

    registry = compose(["data=domains"]).data  # conf/data/domains.yaml decides which file is which domain
    if cfg.data.shards:
        streams, infos = heldout.shard_streams(Path(cfg.data.shards), cfg.data.domains, tok, cfg.data.max_tokens,
                                               cfg.data.split)
    else:
        docs = heldout.domain_documents(registry, Path(cfg.data.local_root), cfg.data.domains, cfg.data.max_documents)
        streams = {name: heldout.token_stream(tok, d["documents"]) for name, d in docs.items()}
        infos = {name: heldout.text_info(d) for name, d in docs.items()}
    empty = [n for n, ids in streams.items() if len(ids) < 2]  # nothing to score: a loss of 0 would be a lie
    if not streams or empty:
        source = "data.shards" if cfg.data.shards else "data.local_root"
        where = cfg.data.shards or cfg.data.local_root
        detail = "; ".join(f"{n}: {infos[n]['documents']} documents from {infos[n]['files']}, skipped "
                           f"{infos[n]['skipped'] or 'none'}" for n in empty)
        raise ConfigError(f"{source}: {where} gives no text to score" + (f" ({detail})" if detail else
                                                                           " (no file of a known domain)"))
    experts = [registry.domains[n].expert if n in registry.domains else None for n in streams]
    return streams, infos, experts


def spec_line(spec: dict[str, float], n_experts: int, top_k: int) -> str:
    """The headline specialisation scores, each with its chance level (uniform routing) and ceiling."""
    return (f"own-expert hit rate {spec['hit_rate']:.3f} (uniform {top_k / n_experts:.2f}, ceiling 1), top-1 own "
            f"{spec['top1_own']:.3f} (uniform {1 / n_experts:.2f}, ceiling 1), own-expert share "
            f"{spec['own_share']:.3f} (uniform {1 / n_experts:.2f}, ceiling {1 / top_k:.2f}), NMI {spec['nmi']:.3f} "
            f"(0 = no dependence, 1 = one-to-one)")


def lm_task(cfg: EvaluateConfig, model, tok, out: Path) -> dict[str, Any]:
    from moe_lm.eval import expert_vocab, heldout
    from moe_lm.eval.plots import routing_heatmap
    from moe_lm.eval.routing import shares
    from moe_lm.eval.specialisation import specialisation_metrics

    context, stride = scoring_window(cfg, model)
    streams, infos, experts = domain_streams(cfg, tok)
    results, counts, top1, per_token = heldout.evaluate_domains(
        model, streams, infos, context, stride, cfg.batch_size, cfg.precision, vocab=cfg.vocab_top > 0)
    total = heldout.overall(results)
    report: dict[str, Any] = {"task": "lm", "ckpt": cfg.ckpt, "context": context, "stride": stride,
                              "precision": cfg.precision, "domains": results, "overall": total}
    md = heldout.markdown(results, total)
    if counts is not None:
        names = [r["domain"] for r in results]
        report["routing"] = {"shares": shares(counts.sum(0)).tolist(), "experts": experts,
                             "specialisation": specialisation_metrics(counts, top1, names, experts)}
        source = f"the {cfg.data.split} split of {cfg.data.shards}" if cfg.data.shards else f"the text under {cfg.data.local_root}"
        heatmap = routing_heatmap(shares(counts.sum(0)), names, str(out), 0, experts, path=out / "routing_heatmap.png",
                                  title="share of each domain's evaluated tokens per expert",
                                  ylabel=f"domain ({source})")
        spec = report["routing"]["specialisation"]
        if "own_share" in spec:
            md += f"\n\nrouting: {spec_line(spec, model.cfg.n_routed_experts, model.cfg.top_k)} (heatmap: {heatmap})"
        if per_token is not None:
            vocab = expert_vocab.expert_vocabulary(per_token, tok, cfg.vocab_top, cfg.vocab_min_count)
            report["routing"]["vocabulary"] = vocab
            owners = {e: n for n, e in zip(names, experts) if e is not None}
            md += "\n\n" + expert_vocab.markdown(vocab, owners)
    write_text_atomic(out / "eval.md", md + "\n")
    print(md)
    return report


def knockout_task(cfg: EvaluateConfig, model, tok, out: Path) -> dict[str, Any]:
    from moe_lm.eval import knockout

    context, stride = scoring_window(cfg, model)
    streams, _, experts = domain_streams(cfg, tok)
    result = knockout.knockout_matrix(model, streams, experts, context, stride, cfg.batch_size, cfg.precision)
    source = f"the {cfg.data.split} split of {cfg.data.shards}" if cfg.data.shards else cfg.data.local_root
    path = knockout.heatmap(result, out / "knockout_heatmap.png",
                            f"loss rise (%) per domain when one expert is removed\n({source})")
    md = knockout.markdown(result) + f"\n\nheatmap: {path}"
    write_text_atomic(out / "eval.md", md + "\n")
    print(md)
    return {"task": "knockout", "ckpt": cfg.ckpt, "context": context, "stride": stride, "precision": cfg.precision,
            "source": source, **result}


def gsm8k_task(cfg: EvaluateConfig, model, tok, out: Path) -> dict[str, Any]:
    from moe_lm.eval.gsm8k import evaluate_gsm8k, load_problems

    problems, skipped = load_problems(cfg.data.file, "data.file", cfg.limit)
    shots = load_problems(cfg.data.shots_file, "data.shots_file", cfg.shots)[0] if cfg.shots else []
    result = evaluate_gsm8k(model, tok, problems, shots, cfg.max_new_tokens, cfg.batch_size)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in result.pop("predictions"):
            line = json.dumps(p, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
            f.write(line + "\n")  # readable UTF-8, but no raw line separators for splitlines() to cut at
    result["skipped"] = skipped
    lo, hi = result["ci95"]
    print(f"gsm8k {result['shots']}-shot: {result['correct']}/{result['n']} = {result['accuracy']:.3f} "
          f"(95% CI {lo:.3f}-{hi:.3f}); predictions in {out / 'predictions.jsonl'}")
    return result


def main(cfg: EvaluateConfig) -> None:
    from moe_lm.errors import CheckpointError
    from moe_lm.inference.expert_control import apply_expert_control
    from moe_lm.io.checkpoint import load_model

    model, tok, run_cfg = load_model(cfg.ckpt, cfg.device)
    if tok is None:
        raise CheckpointError(f"ckpt: {cfg.ckpt} carries no tokenizer, so its text cannot be tokenised")
    steered = apply_expert_control(model, cfg.experts, run_cfg)
    if steered:
        print(steered)
    out = out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    task = {"lm": lm_task, "knockout": knockout_task, "gsm8k": gsm8k_task}[cfg.task]
    report = task(cfg, model, tok, out)
    if steered:
        report["experts"] = {"drop": cfg.experts.drop, "force": cfg.experts.force, "applied": steered}
    write_text_atomic(out / "eval.json", json.dumps(report, indent=2))
    print(f"wrote {out / 'eval.json'}")


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "evaluate", __doc__, argv=argv, example=EXAMPLE)


if __name__ == "__main__":
    cli()
