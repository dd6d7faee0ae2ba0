"""Evaluate a checkpoint: `python -m moe_lm.evaluate ckpt=PATH data.local_root=DIR [data.domains=[math,code]]`,
or `python -m moe_lm.evaluate ckpt=PATH task=gsm8k data.file=test.jsonl data.shots_file=train.jsonl [shots=8]`.

task=lm: held-out text of each domain (a directory laid out like paths.data_root, files and formatters from
conf/data/domains.yaml): loss, perplexity and bits per byte per domain and overall, with sliding windows of
`context` tokens `stride` apart, and the routing of that text (domain x expert matrix, specialisation scores,
heatmap) (moe_lm/eval/heldout.py). task=gsm8k: k-shot exact-match accuracy with a 95% interval and every
prediction (moe_lm/eval/gsm8k.py). Writes eval.json (and eval.md, a heatmap, predictions.jsonl) under `out`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from moe_lm.cli import run_command
from moe_lm.config import ConfigError, EvaluateConfig

EXAMPLE = ("python -m moe_lm.evaluate ckpt=runs/overfit_100_lines/checkpoints/final.ckpt "
           "data.local_root=../shared/data data.max_documents=20")


def out_dir(cfg: EvaluateConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    ckpt = Path(cfg.ckpt).resolve()
    return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / "eval"


def lm_task(cfg: EvaluateConfig, model, tok, out: Path) -> dict[str, Any]:
    from moe_lm.cli import compose
    from moe_lm.eval import heldout
    from moe_lm.eval.plots import routing_heatmap
    from moe_lm.eval.routing import shares
    from moe_lm.eval.specialisation import specialisation_metrics

    context = cfg.context or model.cfg.max_seq_len
    if context < 2 or context > model.cfg.max_seq_len:
        raise ConfigError(f"context: {context} must be in [2, {model.cfg.max_seq_len}] (the model's max_seq_len)")
    stride = cfg.stride or max(1, context // 2)
    if stride > context:
        raise ConfigError(f"stride: {stride} must be <= context ({context})")
    registry = compose(["data=domains"]).data  # conf/data/domains.yaml decides which file is which domain
    docs = heldout.domain_documents(registry, Path(cfg.data.local_root), cfg.data.domains, cfg.data.max_documents)
    results, counts, top1 = heldout.evaluate_domains(model, tok, docs, context, stride, cfg.batch_size, cfg.precision)
    total = heldout.overall(results)
    report: dict[str, Any] = {"task": "lm", "ckpt": cfg.ckpt, "context": context, "stride": stride,
                              "precision": cfg.precision, "domains": results, "overall": total}
    md = heldout.markdown(results, total)
    if counts is not None:
        names = [r["domain"] for r in results]
        experts = [registry.domains[n].expert for n in names]
        report["routing"] = {"shares": shares(counts.sum(0)).tolist(), "experts": experts,
                             "specialisation": specialisation_metrics(counts, top1, names, experts)}
        heatmap = routing_heatmap(shares(counts.sum(0)), names, str(out), 0, experts, path=out / "routing_heatmap.png",
                                  title="share of each domain's held-out tokens per expert")
        spec = report["routing"]["specialisation"]
        if "own_share" in spec:
            md += (f"\n\nrouting: own-expert share {spec['own_share']:.3f}, top-1 own {spec['top1_own']:.3f}, "
                   f"NMI {spec['nmi']:.3f} (heatmap: {heatmap})")
    (out / "eval.md").write_text(md + "\n")
    print(md)
    return report


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
    from moe_lm.inference.checkpoint import CheckpointError, load_model

    model, tok, _ = load_model(cfg.ckpt, cfg.device)
    if tok is None:
        raise CheckpointError(f"ckpt: {cfg.ckpt} carries no tokenizer, so its text cannot be tokenised")
    out = out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    report = (lm_task if cfg.task == "lm" else gsm8k_task)(cfg, model, tok, out)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'eval.json'}")


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "evaluate", __doc__, argv=argv, example=EXAMPLE)


if __name__ == "__main__":
    cli()
