"""A non-finite step is never applied and stops the run, read without a host sync on every step."""

import pytest
import torch

from moe_lm.errors import NonFiniteError
from moe_lm.training.finite_guard import FiniteGuard

from tests.host_sync import forbid_host_sync


def step(guard, opt, p, grad_value, n):
    p.grad = torch.full_like(p, grad_value)
    loss, norm = torch.tensor(1.0), p.grad.norm()
    guard.check(opt, n, loss, norm, loss + norm)
    opt.step()


def test_the_fused_optimizer_skips_a_non_finite_step_on_the_device_and_the_run_stops_naming_it():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.1, fused=True)
    guard = FiniteGuard(0.1)
    with forbid_host_sync():  # nothing read on the host while stepping
        step(guard, opt, p, 1.0, 1)
        after_good = p.detach().clone()
        step(guard, opt, p, float("nan"), 2)
        assert torch.equal(p.detach(), after_good)  # the update (weight decay too) was skipped
        step(guard, opt, p, 1.0, 3)  # a later finite step updates as usual
        step(guard, opt, p, float("inf"), 4)
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), after_good)
    assert opt.state[p]["step"].item() == 2  # the skipped steps did not count
    with pytest.raises(NonFiniteError, match=r"step 2: the loss \(1\) or gradient norm \(nan\) is not finite; its "
                                             r"update and any later non-finite one were skipped"):
        guard.raise_if_seen()


def test_without_a_fused_optimizer_the_step_is_checked_at_once():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    guard = FiniteGuard(0.1)
    step(guard, opt, p, 1.0, 1)
    guard.raise_if_seen()  # nothing seen
    with pytest.raises(NonFiniteError, match=r"step 2: .* stopped before the update"):
        step(guard, opt, p, float("nan"), 2)
