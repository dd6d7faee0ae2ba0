"""The ablation report's arms and its held-out tables, from hand-made result.json contents."""

import json

import pytest

from moe_lm.eval.ablation import ablation_table, arm_of, by_arm, heldout_scores, knockout_scores


def run(arm: str, seed: int, loss: float, top_k: int = 2, warm_steps: int = 150, dense: bool = False) -> dict:
    return {"warm_start": arm, "dense": dense, "seed": seed, "top_k": top_k, "warm_steps": warm_steps,
            "val/loss": loss, "val/loss/math": loss, "spec/hit_rate": 0.8, "step_time_s": 1.0}


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
