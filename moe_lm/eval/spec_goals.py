"""The specialisation goals, checked per arm of an ablation report (docs/experiments.md), on the val split and,
where the runs have them, on the held-out split (`evaluate data.split=heldout`):

1. top-1 own >= 0.80 and own-expert hit rate >= 0.90 (means over the seeds), at a mean loss no more than 0.5%
   above the `none` arm's (the MoE without a warm start);
2. lower loss than the dense twin beyond the seed spread (every seed of the arm below every seed of the dense
   twin) in at least 5 of the 6 domains;
3. removing a domain's own expert raises its loss at least 3x as much as removing any other routed expert, in
   all five expert domains (the knockout; the fewest such domains over the seeds).
"""

from __future__ import annotations

from statistics import mean

SPLITS = {"val": ("val/loss", "spec/hit_rate", "spec/top1_own", "knockout/own_3x"),
          "held-out": ("eval_heldout/loss", "eval_heldout/hit_rate", "eval_heldout/top1_own", "knockout_heldout/own_3x")}
TOP1, HIT, LOSS_MARGIN, DOMAINS_BEATEN, EXPERT_DOMAINS = 0.80, 0.90, 0.005, 5, 5


def _mean(runs: list[dict], key: str):
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return mean(vals) if vals else None


def beats_dense(runs: list[dict], dense: list[dict], loss_key: str) -> tuple[int, int]:
    """(domains where every seed of `runs` is below every seed of `dense`, domains compared)."""
    domains = sorted({k.removeprefix(loss_key + "/") for r in runs for k in r if k.startswith(loss_key + "/")})
    won = 0
    for d in domains:
        ours = [r[f"{loss_key}/{d}"] for r in runs if f"{loss_key}/{d}" in r]
        theirs = [r[f"{loss_key}/{d}"] for r in dense if f"{loss_key}/{d}" in r]
        won += bool(ours and theirs and max(ours) < min(theirs))
    return won, len(domains)


def goals_table(groups: dict[str, list[dict]]) -> str:
    """One row per MoE arm and split; empty without a `none` arm to compare with."""
    if "none" not in groups:
        return ""
    dense = groups.get("dense", [])
    rows = ["", "", "the specialisation goals (docs/experiments.md): top-1 own >= 0.80 and hit rate >= 0.90 at a loss "
            "<= none + 0.5%; below the dense twin beyond the seeds in >= 5 of 6 domains; own >= 3x any other in all "
            "5 expert domains (fewest over the seeds)", "",
            "| arm | split | loss vs none | hit rate | top-1 own | below dense (domains) | KO own >= 3x any other | "
            "goals met |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for arm, runs in groups.items():
        if arm == "dense":
            continue
        for split, (loss, hit, top1, ko) in SPLITS.items():
            ours, base = _mean(runs, loss), _mean(groups["none"], loss)
            if ours is None or base is None:
                continue
            rel, h, t = ours / base - 1, _mean(runs, hit), _mean(runs, top1)
            won, n = beats_dense(runs, dense, loss) if dense else (0, 0)
            kos = [r[ko] for r in runs if ko in r]
            met = {1: h is not None and t is not None and h >= HIT and t >= TOP1 and rel <= LOSS_MARGIN,
                   2: bool(dense) and won >= DOMAINS_BEATEN, 3: bool(kos) and min(kos) >= EXPERT_DOMAINS}
            rows.append(f"| {arm} | {split} | {rel:+.2%} | {'-' if h is None else f'{h:.3f}'} | "
                        f"{'-' if t is None else f'{t:.3f}'} | {f'{won} of {n}' if dense else '-'} | "
                        f"{min(kos) if kos else '-'} | {', '.join(str(g) for g, ok in met.items() if ok) or 'none'} |")
    return "\n".join(rows)
