"""With every architecture switch at its default, the model computes exactly what it computed before the switches
existed: logits, cached decoding, training losses and every gradient, for MLA, GQA and softmax/loop routing.

The recording (tests/model/data/default_path.safetensors) was made by experiments/default_path_golden.py with the
code of commit 0f88ef3. Floating-point results can differ between CPU kernels, so the comparison is exact on a
machine of the recording's fingerprint (torch version, ISA, thread count) and within 1e-6 elsewhere.
"""

import sys
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))
from default_path_golden import OUT, compute, fingerprint  # noqa: E402


def test_default_path_equals_the_recording():
    with safe_open(str(OUT), "pt") as f:
        recorded = {k: f.get_tensor(k) for k in f.keys()}
        same_machine = f.metadata()["fingerprint"] == fingerprint()
    now = compute()
    assert sorted(now) == sorted(recorded)
    for k, v in now.items():
        if same_machine:
            assert torch.equal(v, recorded[k]), f"{k}: max diff {(v - recorded[k]).abs().max():.3g}"
        else:
            torch.testing.assert_close(v, recorded[k], atol=1e-6, rtol=1e-6, msg=k)


def test_the_recording_can_fail():
    """A switch that changes the function changes the recorded numbers (the comparison is not vacuous)."""
    from default_path_golden import TINY
    from moe_lm.config import ModelConfig
    from moe_lm.model import MoETransformer

    torch.manual_seed(0)
    model = MoETransformer(ModelConfig(**TINY, logit_softcap=1.0)).eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 13))
    with safe_open(str(OUT), "pt") as f:
        with torch.no_grad():
            assert not torch.allclose(model(ids[:, :-1]).logits, f.get_tensor("mla.logits"), atol=1e-3)
