"""The two ablations' multiruns compose, and 2-arm, few-step versions run and report."""

import subprocess
import sys

from moe_lm.cli import compose

DOMAINS = ("math", "code", "science", "legal", "chat", "web")


def sweep_and_report(tmp_path, shared_data, *overrides: str) -> dict[str, str]:
    """Run a tiny multirun on ../shared's samples, then `moe_lm.report`: its table rows by first cell."""
    budgets = [f"data.domains.{d}.token_budget=20000" for d in DOMAINS]
    subprocess.run([sys.executable, "-m", "moe_lm.train", "-m", *overrides, "seed=1", "model.vocab_size=1024",
                    "tokenizer.vocab_size=1024", "data.seq_len=32", "data.batch_size=4", "trainer.max_steps=4",
                    "trainer.progress_bar=false", f"paths.data_root={shared_data}", f"data.shards={tmp_path}/shards",
                    f"prepare.out={tmp_path}/shards", f"prepare.tokenizer={tmp_path}/tok/tokenizer.json",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", *budgets], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "moe_lm.report", f"dir={tmp_path / 'sweep'}"], check=True,
                         capture_output=True, text=True).stdout
    return {ln.split("|")[1].strip(): ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln}


def test_every_arm_composes_to_its_setting():
    arms = {a: compose(["+experiment=specialisation_ablation", f"+arm={a}"]) for a in
            ("dense", "none", "round_robin", "guided")}
    assert arms["dense"].model.name == "dense_small" and arms["dense"].model.first_k_dense == arms["dense"].model.n_layers
    assert {a: c.routing.arm for a, c in arms.items()} == {
        "dense": "round_robin", "none": "none", "round_robin": "round_robin", "guided": "round_robin+guided"}
    assert len({(c.data.seq_len, c.data.batch_size, c.trainer.max_steps) for c in arms.values()}) == 1  # same tokens


def test_every_warm_start_arm_composes_with_sigmoid_routing_and_equal_tokens():
    names = ("dense_mixed", "none", "guided", "guided_mixed", "forced", "domain_mean", "window")
    arms = {a: compose(["+experiment=warm_start_ablation", f"+arm={a}"]) for a in names}
    assert {a: c.routing.arm for a, c in arms.items()} == {
        "dense_mixed": "none", "none": "none", "guided": "round_robin+guided", "guided_mixed": "guided",
        "forced": "forced", "domain_mean": "domain_mean", "window": "round_robin+guided+window"}
    assert {c.model.scoring for c in arms.values()} == {"sigmoid"}
    assert arms["dense_mixed"].model.first_k_dense == arms["dense_mixed"].model.n_layers
    assert len({(c.data.seq_len, c.data.batch_size, c.trainer.max_steps, c.data.round_robin_steps)
                for c in arms.values()}) == 1


def test_two_arm_ablation_runs_and_reports(tmp_path, shared_data):
    rows = sweep_and_report(tmp_path, shared_data, "+experiment=specialisation_ablation", "+arm=dense,guided",
                            "data.round_robin_steps=2", "trainer.val_check_interval=2")
    sweep = tmp_path / "sweep"
    assert set(rows) == {"arm", "dense", "round_robin+guided"}
    assert rows["dense"].count(" - ") >= 4  # a dense model has no routing scores
    assert "hit rate" in rows["arm"] and rows["round_robin+guided"].count(" - ") == 0
    assert (sweep / "val_loss_by_domain.png").stat().st_size > 1000 and (sweep / "hit_rate.png").stat().st_size > 1000
    assert len(list(sweep.glob("*/routing/step*.json"))) == 2  # the guided run, at steps 2 and 4
    # the knockout of the MoE run, beside it, joins the report
    from moe_lm.evaluate import cli as evaluate
    from moe_lm.report import cli as report

    moe_run = next(p.parent for p in sweep.glob("*/routing")).resolve()
    evaluate([f"ckpt={moe_run}/checkpoints/final.ckpt", "task=knockout", f"data.shards={tmp_path}/shards",
              "context=32", "data.max_tokens=200"])
    assert (moe_run / "knockout" / "knockout_heatmap.png").stat().st_size > 1000
    report([f"dir={sweep}"])
    table = (sweep / "report.md").read_text()
    assert "KO own/mean other (min)" in table or "domains with KO own >= 3x any other" in table


def test_architecture_ablation_runs_and_reports(tmp_path, shared_data):
    """Two arms of +experiment=architecture_ablation through Lightning (the MTP arm logs its own loss), then the
    report's one row per switch setting."""
    rows = sweep_and_report(tmp_path, shared_data, "+experiment=architecture_ablation", "+arch=baseline,mtp",
                            "trainer.val_check_interval=4", "trainer.log_every_n_steps=1")
    sweep = tmp_path / "sweep"
    assert set(rows) == {"switch", "baseline", "mtp_depth=1"}
    assert "vs baseline" in rows["switch"] and (sweep / "arch_val_loss.png").stat().st_size > 1000
    metrics = next((sweep / "1").rglob("metrics.csv")).read_text()
    assert "train/mtp_loss" in metrics.splitlines()[0]


def test_the_goal_arms_compose_on_shards_with_a_held_out_split():
    names = ("dense_mixed", "none", "forced", "forced_guided", "forced_top1")
    arms = {a: compose(["+experiment=specialisation_goals", f"+arm={a}"]) for a in names}
    assert {a: c.routing.arm for a, c in arms.items()} == {
        "dense_mixed": "none", "none": "none", "forced": "forced", "forced_guided": "forced_guided",
        "forced_top1": "forced"}
    assert {c.data.round_robin_steps for c in arms.values()} == {150}
    assert (arms["forced_top1"].model.top_k, arms["forced_top1"].model.norm_topk_prob) == (1, False)
    assert arms["forced_guided"].routing.guided_coef == 0.02
    c = arms["none"]
    assert c.prepare.heldout_fraction == 0.1 and c.prepare.heldout_tokens > 0 and c.data.shards == c.prepare.out
    assert c.prepare.tokenizer.startswith(c.tokenizer.out)


def test_an_arm_means_the_same_before_or_after_its_experiment():
    """A sweep puts `+arm` before `+experiment` in each job's overrides (the experiment's sweeper params come
    first), a command line may put it after: an arm that sets a key its experiment also sets would lose in one
    order and win in the other. Every arm composes to the same config in both orders, with every experiment
    that sweeps arms."""
    from pathlib import Path

    import yaml
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf"
    arms = sorted(p.stem for p in (conf / "arm").glob("*.yaml"))
    experiments = [p.stem for p in (conf / "experiment").glob("*.yaml")
                   if "+arm" in str(yaml.safe_load(p.read_text()).get("hydra", {}))]
    assert {"specialisation_ablation", "warm_start_ablation", "specialisation_goals"} <= set(experiments)
    for exp in experiments:
        for arm in arms:
            after = compose([f"+experiment={exp}", f"+arm={arm}"])
            before = compose([f"+arm={arm}", f"+experiment={exp}"])
            assert OmegaConf.structured(after) == OmegaConf.structured(before), (exp, arm)
