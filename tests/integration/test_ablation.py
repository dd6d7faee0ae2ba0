"""The specialisation ablation's multirun composes, and a 2-arm, few-step version runs and reports."""

import subprocess
import sys

from moe_lm.cli import compose


def test_every_arm_composes_to_its_setting():
    arms = {a: compose(["+experiment=specialisation_ablation", f"+arm={a}"]) for a in
            ("dense", "none", "round_robin", "guided")}
    assert arms["dense"].model.name == "dense_small" and arms["dense"].model.first_k_dense == arms["dense"].model.n_layers
    assert {a: c.routing.warm_start for a, c in arms.items()} == {
        "dense": "round_robin", "none": "none", "round_robin": "round_robin", "guided": "guided"}
    assert len({(c.data.seq_len, c.data.batch_size, c.trainer.max_steps) for c in arms.values()}) == 1  # same tokens


def test_two_arm_ablation_runs_and_reports(tmp_path, shared_data):
    sweep = tmp_path / "sweep"
    budgets = [f"data.domains.{d}.token_budget=20000" for d in ("math", "code", "science", "legal", "chat", "web")]
    subprocess.run([sys.executable, "-m", "moe_lm.train", "-m", "+experiment=specialisation_ablation", "+arm=dense,guided",
                    "seed=1", "model.vocab_size=1024", "tokenizer.vocab_size=1024", "data.seq_len=32", "data.batch_size=4",
                    "data.round_robin_steps=2", "trainer.max_steps=4", "trainer.val_check_interval=2",
                    "trainer.progress_bar=false", f"paths.data_root={shared_data}", f"data.shards={tmp_path}/shards",
                    f"prepare.out={tmp_path}/shards", f"prepare.tokenizer={tmp_path}/tok/tokenizer.json",
                    f"hydra.sweep.dir={sweep}", *budgets], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "moe_lm.report", f"dir={sweep}"], check=True, capture_output=True,
                         text=True).stdout
    rows = {ln.split("|")[1].strip(): ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert set(rows) == {"arm", "dense", "guided"}
    assert rows["dense"].count(" - ") >= 4  # a dense model has no routing scores
    assert "own share" in rows["arm"] and rows["guided"].count(" - ") == 0
    assert (sweep / "val_loss_by_domain.png").stat().st_size > 1000 and (sweep / "own_share.png").stat().st_size > 1000
    assert len(list(sweep.glob("*/routing/step*.json"))) == 2  # the guided run, at steps 2 and 4


def test_architecture_ablation_runs_and_reports(tmp_path, shared_data):
    """Two arms of +experiment=architecture_ablation through Lightning (the MTP arm logs its own loss), then the
    report's one row per switch setting."""
    sweep = tmp_path / "sweep"
    budgets = [f"data.domains.{d}.token_budget=20000" for d in ("math", "code", "science", "legal", "chat", "web")]
    subprocess.run([sys.executable, "-m", "moe_lm.train", "-m", "+experiment=architecture_ablation", "+arch=baseline,mtp",
                    "seed=1", "model.vocab_size=1024", "tokenizer.vocab_size=1024", "data.seq_len=32", "data.batch_size=4",
                    "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
                    "trainer.progress_bar=false", f"paths.data_root={shared_data}", f"data.shards={tmp_path}/shards",
                    f"prepare.out={tmp_path}/shards", f"prepare.tokenizer={tmp_path}/tok/tokenizer.json",
                    f"hydra.sweep.dir={sweep}", *budgets], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "moe_lm.report", f"dir={sweep}"], check=True, capture_output=True,
                         text=True).stdout
    rows = {ln.split("|")[1].strip(): ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert set(rows) == {"switch", "baseline", "mtp_depth=1"}
    assert "vs baseline" in rows["switch"] and (sweep / "arch_val_loss.png").stat().st_size > 1000
    metrics = next((sweep / "1").rglob("metrics.csv")).read_text()
    assert "train/mtp_loss" in metrics.splitlines()[0]
