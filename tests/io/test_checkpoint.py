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


def test_non_finite_weights_are_named_at_load(tiny_ckpt, tmp_path):
    from moe_lm.errors import CheckpointError
    from moe_lm.io.checkpoint import load_model

    load_model(tiny_ckpt)  # a sound checkpoint loads
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.endswith("gate.weight"))
    ckpt["state_dict"][name][0, :3] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    short = name.removeprefix("model.")
    with pytest.raises(CheckpointError, match=rf"nan.ckpt holds non-finite weights in 1 tensors: {short} \(3 values\)"):
        load_model(tmp_path / "nan.ckpt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no CUDA GPU is present")
def test_a_device_the_machine_lacks_is_named_before_the_load(tmp_path):
    from moe_lm.config import ConfigError
    from moe_lm.io.checkpoint import load_model

    with pytest.raises(ConfigError, match="device: cuda asked for, but torch .* sees no CUDA GPU here; use device=cpu"):
        load_model(tmp_path / "never_read.ckpt", "cuda")
