"""The training step of moe_100m (forward with the fused loss, the balance losses, backward) compiles to one graph
with fullgraph=True for every compile-clean model.moe_impl, with eager's loss and gradients; a planted graph break
fails it. (The per-path dispatch equivalence is tests/model/test_moe_dispatch.py.)"""

import copy
import dataclasses

import pytest
import torch

from moe_lm.cli import compose
from moe_lm.model import MoETransformer
from moe_lm.model.loss import IGNORE_INDEX
from moe_lm.model.router import TopkRouter

# The loop reads its group sizes on the host: a graph break in every MoE layer under the default compile
# (tests/model/test_moe_dispatch.py), and a host sync in the step (tests/training/test_step_sync.py).
COMPILE_CLEAN = ["grouped_mm", "bmm", "capacity"]


def moe_100m(n_layers: int = 2, **overrides):
    """moe_100m's widths (d_model 512, MLA ranks, 5 x 576 experts, 32k vocab) at fewer layers: the same ops."""
    return dataclasses.replace(compose(["model=moe_100m"]).model, n_layers=n_layers, **overrides)


def batch(cfg, B: int = 2, T: int = 32):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets[-1, T * 2 // 3:] = IGNORE_INDEX  # padding, as the data module's last window of a document
    return ids, targets


def step(forward, cfg, ids, targets, bf16: bool = True) -> torch.Tensor:
    """The LightningModule's loss (moe_lm/training/lit_module.py): mean cross-entropy + the balance losses."""
    valid = targets != IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = forward(ids, token_mask=valid, targets=targets)
    loss = out.ce_sum / valid.sum() + cfg.aux_loss_coef * out.aux_loss + cfg.z_loss_coef * out.z_loss
    loss.backward()
    return loss.detach()


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", COMPILE_CLEAN)
def test_the_training_step_compiles_to_one_graph_with_eager_numerics(impl):
    cfg = moe_100m(moe_impl=impl)
    torch.manual_seed(0)
    eager = MoETransformer(cfg).train()
    compiled = copy.deepcopy(eager)
    ids, targets = batch(cfg)
    loss_e = step(eager, cfg, ids, targets)
    # aot_eager traces the forward and the backward (AOTAutograd's joint graph) without inductor's code
    # generation: a graph break anywhere in the step raises here
    loss_c = step(torch.compile(compiled.forward, fullgraph=True, backend="aot_eager"), cfg, ids, targets)
    torch._dynamo.reset()
    torch.testing.assert_close(loss_c, loss_e, atol=2e-2, rtol=2e-3)  # bf16
    g_e, g_c = grads(eager), grads(compiled)
    assert set(g_c) == set(g_e) and len(g_e) == len(list(eager.parameters()))
    for name, g in g_e.items():
        torch.testing.assert_close(g_c[name].float(), g.float(), atol=2e-3, rtol=5e-2, msg=name)


def test_a_planted_graph_break_fails_the_fullgraph_compile(monkeypatch):
    """The check above can fail: a host read in the router (a Python branch on a tensor) breaks the graph."""
    cfg = moe_100m(n_layers=1, moe_impl="grouped_mm")
    model = MoETransformer(cfg).train()
    forward = TopkRouter.forward

    def branching(self, x, forced=None):
        if (x > 0).any():  # a data-dependent Python branch: dynamo must leave the graph
            return forward(self, x, forced)
        return forward(self, -x, forced)

    monkeypatch.setattr(TopkRouter, "forward", branching)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        step(torch.compile(model.forward, fullgraph=True, backend="aot_eager"), cfg, *batch(cfg))
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("impl", COMPILE_CLEAN)
def test_the_whole_moe_100m_step_compiles_with_inductor(impl):
    """All 12 layers through inductor's generated code (as trainer.compile=true runs it), in fp32: eager's loss and
    gradients. (In bf16 over 12 layers, roundings that differ between fused kernels and eager flip some routing
    choices, so gradients differ by several percent; the 2-layer bf16 check above holds them to bf16 tolerance.)"""
    cfg = moe_100m(n_layers=12, moe_impl=impl)
    torch.manual_seed(0)
    eager = MoETransformer(cfg).train()
    compiled = copy.deepcopy(eager)
    ids, targets = batch(cfg, 1, 64)
    loss_e = step(eager, cfg, ids, targets, bf16=False)
    loss_c = step(torch.compile(compiled.forward, fullgraph=True), cfg, ids, targets, bf16=False)
    torch._dynamo.reset()
    torch.testing.assert_close(loss_c, loss_e, atol=1e-4, rtol=1e-5)
    g_e, g_c = grads(eager), grads(compiled)
    assert set(g_c) == set(g_e)
    for name, g in g_e.items():
        rel = (g_c[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert rel < 1e-3, (name, float(rel))
