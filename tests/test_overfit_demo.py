"""The main demo, end to end (about 9 minutes on a 2-core CPU): `make test-full` runs it."""

import pytest

from moe_lm.conf_utils import compose
from moe_lm.run import train


@pytest.mark.slow
def test_overfit_100_lines_memorises_and_reproduces(tmp_path):
    cfg = compose(["+experiment=overfit_100_lines", "trainer.progress_bar=false", f"out_dir={tmp_path}"])
    assert cfg.model.name == "moe_100m" and cfg.precision.name == "bf16"
    result = train(cfg, tmp_path)
    assert result["train_loss_full_pass"] <= 0.05
    assert result["reproduced"] >= 9
    assert (tmp_path / "loss_curve.png").exists() and (tmp_path / "checkpoints" / "final.ckpt").exists()
