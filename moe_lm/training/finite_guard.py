"""A non-finite loss or gradient norm stops the run, and no update is made with it, without reading the device
on every step.

With the fused AdamW (the default wherever it runs), the check stays on the device: the step's flag is handed
to the optimizer as `found_inf`, on which the fused kernel skips the update (as it does for the grad scaler), and
the first bad step, its loss and its gradient norm are kept in device tensors. They are read at logging steps,
before every checkpoint and at the end, where the run stops with the step named: the weights and every
checkpoint stay finite. Without a fused optimizer (fp16 with its grad scaler, or optimizer.fused=false) there
is no device-side skip, so the check reads the flag on each step, before the update.
"""

from __future__ import annotations

from typing import Optional

import torch

from moe_lm.errors import NonFiniteError


class FiniteGuard:
    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.first: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # (step, loss, norm)

    @staticmethod
    def skips_on_device(optimizer) -> bool:
        opt = getattr(optimizer, "optimizer", optimizer)  # under Lightning's wrapper
        return all(group.get("fused") for group in opt.param_groups)

    def error(self, step: int, loss: float, norm: float, deferred: bool) -> NonFiniteError:
        how = ("its update and any later non-finite one were skipped" if deferred
               else "stopped before the update")
        return NonFiniteError(f"step {step}: the loss ({loss:.4g}) or gradient norm ({norm:.4g}) is not finite; "
                              f"{how}, so the last checkpoint holds finite weights. Lower optimizer.lr (now "
                              f"{self.lr:g}) or set optimizer.grad_clip")

    def check(self, optimizer, step: int, loss: torch.Tensor, norm: torch.Tensor, checked: torch.Tensor) -> None:
        """Before the update of optimizer step `step` (1-based): `checked` must be finite."""
        if not self.skips_on_device(optimizer):
            if not torch.isfinite(checked):  # a host read: no device-side skip to rely on
                raise self.error(step, loss.item(), norm.item(), deferred=False)
            return
        bad = ~torch.isfinite(checked)
        getattr(optimizer, "optimizer", optimizer).found_inf = bad.float()  # a scalar, as the grad scaler passes
        if self.first is None:
            self.first = (torch.full((), -1, device=bad.device), loss.new_zeros(()), norm.new_zeros(()))
        seen_step, seen_loss, seen_norm = self.first
        new = bad & (seen_step < 0)
        self.first = (torch.where(new, step, seen_step), torch.where(new, loss.detach(), seen_loss),
                      torch.where(new, norm.detach(), seen_norm))

    def raise_if_seen(self) -> None:
        """A host read: raise for the first non-finite step, if there was one."""
        if self.first is not None and int(self.first[0]) >= 0:
            step, loss, norm = (t.item() for t in self.first)
            raise self.error(int(step), loss, norm, deferred=True)
