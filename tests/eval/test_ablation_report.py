"""The ablation report's arms and its held-out tables, from hand-made result.json contents."""

import json

import pytest

from moe_lm.eval.ablation import ablation_table, arm_of, by_arm, heldout_scores, knockout_scores


def run(arm: str, seed: int, loss: float, top_k: int = 2, warm_steps: int = 150, dense: bool = False,
        domain: str | None = "math") -> dict:
    r = {"warm_start": arm, "dense": dense, "seed": seed, "top_k": top_k, "warm_steps": warm_steps,
         "val/loss": loss, "spec/hit_rate": 0.8, "step_time_s": 1.0}
    return {**r, f"val/loss/{domain}": loss} if domain else r


def test_arms_that_differ_in_top_k_or_warm_start_length_get_their_own_rows():
    runs = [run("none", 1, 4.6), run("none", 2, 4.7), run("forced", 1, 4.6), run("forced", 2, 4.6),
            run("forced", 1, 4.5, warm_steps=300), run("forced", 1, 4.8, top_k=1), run("none", 1, 4.7, dense=True)]
    groups = by_arm(runs)
    assert list(groups) == ["dense", "none", "forced", "forced, 300 warm steps", "forced, top-1"]
    assert [len(g) for g in groups.values()] == [1, 2, 2, 1, 1]
    assert arm_of(runs[0]) == "none"  # without the others, no suffix
    assert "| forced, top-1 | 1 | 4.800 |" in ablation_table(runs)


def test_held_out_scores_join_the_report(tmp_path):
    (tmp_path / "eval_heldout").mkdir()
    (tmp_path / "eval_heldout" / "eval.json").write_text(json.dumps({
        "overall": {"loss": 9.0}, "domains": [{"domain": "math", "loss": 4.0}, {"domain": "web", "loss": 5.0}],
        "routing": {"specialisation": {"hit_rate": 0.9, "top1_own": 0.8, "nmi": 0.2}}}))
    (tmp_path / "knockout_heldout").mkdir()
    (tmp_path / "knockout_heldout" / "eval.json").write_text(json.dumps({"ratios": {
        "math": {"ratio_mean": 10.0, "ratio_max": 4.0, "own_3x_any_other": True}}}))
    scores = {**heldout_scores(tmp_path), **knockout_scores(tmp_path, "knockout_heldout")}
    assert scores["eval_heldout/loss"] == pytest.approx(4.5)  # the domains' mean, as val/loss (not overall)
    assert scores["eval_heldout/top1_own"] == 0.8 and scores["knockout_heldout/ratio_max_min"] == 4.0
    assert scores["knockout_heldout/own_3x"] == 1 and not knockout_scores(tmp_path)
    runs = [{**run("forced", 1, 4.6), **scores}, run("none", 1, 4.6)]
    table = ablation_table(runs)
    assert "on the held-out split" in table and "knockout (held-out split)" in table
    assert "| forced | 1 | 4.500 | 4.000 | 5.000 | 0.900 | 0.800 | 0.200 | 4.00 | 1.00 |" in table


def test_the_goals_table_checks_each_goal_against_none_and_the_dense_twin():
    def moe(arm, seed, loss, hit, top1, ko):
        return {**run(arm, seed, loss, domain=None), "spec/hit_rate": hit, "spec/top1_own": top1, "knockout/own_3x": ko,
                **{f"val/loss/{d}": loss + i * 0.01 for i, d in enumerate("abcdef")}}

    dense = [{**run("none", s, 5.0, dense=True, domain=None), **{f"val/loss/{d}": 5.0 + s * 0.01 for d in "abcdef"}} for s in (1, 2)]
    runs = dense + [moe("none", 1, 4.60, 0.4, 0.2, 1), moe("none", 2, 4.62, 0.4, 0.2, 0),
                    moe("forced", 1, 4.62, 0.92, 0.81, 5), moe("forced", 2, 4.63, 0.91, 0.82, 5),
                    moe("guided", 1, 4.70, 0.95, 0.9, 5), moe("guided", 2, 4.71, 0.95, 0.9, 4)]
    table = ablation_table(runs)
    rows = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if "| val |" in ln}
    assert rows["forced"].endswith("| +0.33% | 0.915 | 0.815 | 6 of 6 | 5 | 1, 2, 3 |")
    assert rows["guided"].endswith("| 6 of 6 | 4 | 2 |")  # 2.1% above none; one seed has 4 domains at 3x
    assert rows["none"].endswith("| +0.00% | 0.400 | 0.200 | 6 of 6 | 0 | 2 |")
    # one seed of the arm at or above a seed of the dense twin in a domain: not beyond the spread there
    runs[4]["val/loss/a"] = 5.015  # forced, seed 1: between the dense seeds (5.01, 5.02)
    assert "| forced | val | +0.33% | 0.915 | 0.815 | 5 of 6 | 5 | 1, 2, 3 |" in ablation_table(runs)


def test_guided_arms_with_other_coefficients_get_their_own_rows():
    runs = [{**run("forced_guided", s, 4.7), "routing": {"guided_coef": c}} for s in (1, 2) for c in (0.1, 0.02)]
    assert list(by_arm(runs + [run("none", 1, 4.6)])) == ["none", "forced_guided, coef 0.02", "forced_guided, coef 0.1"]
    assert list(by_arm([runs[0], runs[2]])) == ["forced_guided"]  # one coefficient: no suffix


def test_the_hit_rate_chance_line_comes_from_each_runs_routing_width(tmp_path):
    from moe_lm.eval.ablation import chance_of

    for name, k in (("top2", 2), ("top1", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"model:\n  top_k: {k}\n  n_routed_experts: 6\n")
    assert chance_of(tmp_path / "top2") == (2, 6) and chance_of(tmp_path / "top1") == (1, 6)
    assert chance_of(tmp_path / "missing") is None


def test_warm_steps_name_only_the_arms_whose_warm_start_acts_and_ties_name_every_length():
    runs = [run("none", 1, 4.6, warm_steps=150), run("forced", 1, 4.6, warm_steps=900),
            run("forced", 2, 4.6, warm_steps=900), run("forced", 1, 4.6, warm_steps=450),
            run("forced", 2, 4.6, warm_steps=450), run("none", 1, 5.0, warm_steps=150, dense=True)]
    assert list(by_arm(runs)) == ["dense", "none", "forced, 450 warm steps", "forced, 900 warm steps"]
    runs[0]["routing"] = {"warm_batches": "mixed", "warm_routing": "learned", "warm_balance": "batch"}
    runs[0]["warm_steps"] = 300  # a length `none` never used: still `none`
    assert arm_of(runs[0], runs) == "none"
