import pytest
import torch

from moe_lm.io.checkpoint import load_checkpoint


def test_missing_truncated_and_foreign_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt"):
        load_checkpoint(tmp_path / "none.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="state_dict"):
        load_checkpoint(foreign)
