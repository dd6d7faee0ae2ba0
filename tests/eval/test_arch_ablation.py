"""The architecture ablation's report: one row per switch setting, differences from the baseline flagged only when
the seed ranges do not overlap."""

import json

from moe_lm.eval.sweep_report import write_report


def _run(path, arch, seed, loss, params=100, train_params=None):
    path.mkdir(parents=True)
    result = {"arch": arch, "seed": seed, "val/loss": loss, "val/loss/math": loss + 0.5, "params": params,
              "train_params": train_params or params, "step_time_s": 0.5, "warm_start": "none", "dense": False}
    (path / "result.json").write_text(json.dumps(result))


def test_rows_differences_and_the_spread_flag(tmp_path):
    for i, (arch, seed, loss) in enumerate([("baseline", 1, 4.00), ("baseline", 2, 4.02), ("qk_norm=True", 1, 3.90),
                                            ("qk_norm=True", 2, 3.92), ("mtp_depth=1", 1, 4.01),
                                            ("mtp_depth=1", 2, 3.97)]):
        _run(tmp_path / str(i), arch, seed, loss, train_params=150 if arch.startswith("mtp") else None)
    md, figures = write_report(tmp_path)
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()[2:]}
    assert list(lines) == ["baseline", "mtp_depth=1", "qk_norm=True"]  # baseline first
    assert "4.010 ± 0.010" in lines["baseline"]
    assert "-0.100 (beyond spread)" in lines["qk_norm=True"]
    assert "-0.020 |" in lines["mtp_depth=1"] and "beyond" not in lines["mtp_depth=1"]  # ranges overlap
    assert "0.00M | 0.00M" in lines["baseline"] and "| 4.510 ± 0.010 |" in lines["baseline"]
    assert figures[0].name == "arch_val_loss.png" and figures[0].stat().st_size > 0
    assert (tmp_path / "report.md").read_text().strip() == md.strip()


def test_a_run_that_wrote_no_result_is_named(tmp_path):
    for i, arch in enumerate(["baseline", "qk_norm=True"]):
        _run(tmp_path / str(i), arch, 1, 4.0)
    (tmp_path / "0" / ".hydra").mkdir()
    (tmp_path / "0" / ".hydra" / "config.yaml").write_text("model: {}\n")  # Hydra's copy, not a run
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "config.yaml").write_text("model: {}\n")  # started, then failed
    md, _ = write_report(tmp_path)
    assert md.splitlines()[-1].startswith("**1 run(s) without result.json**") and md.endswith(": 2")
