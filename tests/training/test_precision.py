"""Precision: what `auto` picks per device, and fp16 with its grad scaler for the MoE (router in fp32, skipped
steps skip the router-bias update, finite balance losses)."""

import pytest
import torch

from moe_lm.config import PrecisionConfig
from moe_lm.model import MoETransformer

from tests.training.test_guidance import _fit


@pytest.mark.parametrize("capability, native, want", [((7, 5), False, "fp16"), ((8, 0), True, "bf16"),
                                                      ((9, 0), True, "bf16")])
def test_auto_picks_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, capability, native, want):
    """A T4 (7.5) reports bf16 as supported when emulation counts (torch's default); auto must not take it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert PrecisionConfig(name="auto").resolved == want


def test_auto_is_bf16_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PrecisionConfig(name="auto").resolved == "bf16"


def test_fp16_autocast_keeps_the_router_in_fp32_and_the_losses_finite(tiny_cfg):
    model = MoETransformer(tiny_cfg).train()
    ids = torch.randint(0, tiny_cfg.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(ids, targets=ids)
    assert out.router_logits.dtype == torch.float32
    for loss in (out.ce_sum, out.aux_loss, out.z_loss):
        assert torch.isfinite(loss), loss


def test_a_step_the_scaler_skips_leaves_weights_and_router_biases_unchanged(fake_shards):
    """fp16-mixed on the CPU (Lightning's GradScaler): step 3's gradients are made infinite; the scaler skips
    that update, and the router biases, which every other step moves, stay where step 2 left them."""
    import lightning as L

    snapshots = {}

    class Spy(L.Callback):
        def on_after_backward(self, trainer, module):
            if trainer.global_step == 2:
                snapshots["before"] = ({k: v.detach().clone() for k, v in module.model.state_dict().items()})
                next(module.model.parameters()).grad.fill_(float("inf"))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 2:
                snapshots["after"] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
                snapshots["scale"] = trainer.precision_plugin.scaler.get_scale()

    import tests.training.test_guidance as g

    real_trainer = L.Trainer

    def with_spy(*a, callbacks=(), **k):
        from lightning.pytorch.plugins import MixedPrecision  # Lightning's flag would turn fp16 on a CPU into bf16

        return real_trainer(*a, callbacks=[*callbacks, Spy()], plugins=[MixedPrecision("16-mixed", "cpu")], **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(g.L, "Trainer", with_spy)
    try:
        trainer, _ = _fit(fake_shards, "precision=fp16", "data.round_robin_steps=0", steps=4)
    finally:
        mp.undo()
    before, after = snapshots["before"], snapshots["after"]
    for k in before:
        assert torch.equal(before[k], after[k]), k  # weights and biases: the skipped step changed nothing
    biases = [k for k in before if k.endswith("e_score_correction_bias")]
    assert biases and any(float(before[k].abs().max()) > 0 for k in biases)  # earlier steps did move them
    assert trainer.global_step == 4
