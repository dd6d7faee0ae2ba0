"""The LightningModule's own arithmetic: validation loss weighting and the optimizer groups."""

import torch
import torch.nn.functional as F

from moe_lm.cli import compose
from moe_lm.data.text_lines import IGNORE_INDEX
from moe_lm.training.lit_module import MoELitModule


def test_val_loss_is_the_mean_over_valid_targets_not_over_padding():
    torch.manual_seed(0)
    module = MoELitModule(compose(["model=moe_tiny", "precision=fp32"])).eval()
    batches = []
    for n_valid in (2, 15):  # a mostly padded batch and a full one: weighting by numel would over-count the first
        ids = torch.randint(0, 512, (2, 8))
        targets = torch.randint(0, 512, (2, 8))
        targets.view(-1)[n_valid:] = IGNORE_INDEX
        batches.append({"input_ids": ids, "targets": targets})
    total, count = 0.0, 0
    with torch.no_grad():
        for i, b in enumerate(batches):
            module.validation_step(b, i)
            valid = b["targets"] != IGNORE_INDEX
            logits = module.model(b["input_ids"]).logits[valid]
            total += float(F.cross_entropy(logits.float(), b["targets"][valid], reduction="sum"))
            count += int(valid.sum())
    torch.testing.assert_close(module.val_loss.compute(), torch.tensor(total / count), rtol=1e-5, atol=1e-6)


def test_router_weights_get_their_own_group_without_decay():
    cfg = compose(["model=moe_tiny", "precision=fp32", "optimizer.router_lr_mult=0.5", "optimizer.weight_decay=0.1"])
    module = MoELitModule(cfg)
    opt = module.configure_optimizers()["optimizer"]
    decay, no_decay, router = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"], router["weight_decay"]) == (0.1, 0.0, 0.0)
    assert router["lr"] == 0.5 * decay["lr"]
    gates = {id(p) for n, p in module.model.named_parameters() if ".mlp.gate.weight" in n}
    assert {id(p) for p in router["params"]} == gates and all(p.dim() < 2 for p in no_decay["params"])


def test_output_z_loss_and_mtp_loss_reach_the_optimised_loss():
    """loss = ce + aux + router z + output_z_loss_coef * mean lse^2 + mtp_loss_weight * MTP cross-entropy."""
    batch = {"input_ids": torch.randint(0, 512, (2, 8)), "targets": torch.randint(0, 512, (2, 8))}
    over = ["model.output_z_loss_coef=0.5", "model.mtp_depth=1", "model.mtp_loss_weight=0.25"]
    torch.manual_seed(0)
    module = MoELitModule(compose(["model=moe_tiny", "precision=fp32", *over])).train()
    loss, ce, routing = module._step(batch)
    out = module.model(batch["input_ids"], targets=batch["targets"])  # the same forward again
    m = module.cfg.model
    expected = (ce + m.aux_loss_coef * out.aux_loss + m.z_loss_coef * out.z_loss + 0.5 * out.lm_z_sum / 16
                + 0.25 * out.mtp_loss)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-6)
    assert out.lm_z_sum > 0 and out.mtp_loss > 0
    torch.testing.assert_close(routing["extra_losses"]["train/mtp_loss"], out.mtp_loss.detach())  # logged


def test_learned_activation_parameters_are_not_decayed():
    module = MoELitModule(compose(["model=moe_tiny", "precision=fp32", "model.activation=learned_gelu"]))
    decay, no_decay, _ = module.configure_optimizers()["optimizer"].param_groups
    acts = {id(p) for n, p in module.model.named_parameters() if ".act_" in n}
    assert acts and acts <= {id(p) for p in no_decay["params"]} and not acts & {id(p) for p in decay["params"]}
