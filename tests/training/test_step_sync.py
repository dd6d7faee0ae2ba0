"""Nothing in the training step's forward and backward reads a device value on the host: no `.item()`, no
`.tolist()`, no `.cpu()`, no data-dependent shape, no Python branch on a tensor. On a GPU any of those would stall
the CPU until the GPU catches up (and break a CUDA graph); here the entry points are patched to raise
(tests/host_sync.py), and the step of the LightningModule runs under that patch."""

import pytest
import torch

from moe_lm.cli import compose
from moe_lm.data.text_lines import IGNORE_INDEX
from moe_lm.training.lit_module import MoELitModule

from tests.host_sync import HostSync, forbid_host_sync

DOMAINS = ["math", "code", "science", "legal", "chat", "web"]


def module_and_batch(*overrides: str, B: int = 6, T: int = 16):
    torch.manual_seed(0)
    cfg = compose(["model=moe_tiny", "precision=fp32", "data=domains", "data.seq_len=16", *overrides])
    experts = [cfg.data.domains[d].expert for d in DOMAINS]
    module = MoELitModule(cfg, domains=DOMAINS, experts=experts).train()
    ids = torch.randint(0, cfg.model.vocab_size, (B, T))
    targets = torch.randint(0, cfg.model.vocab_size, (B, T))
    targets[-1, T // 2:] = IGNORE_INDEX
    return module, {"input_ids": ids, "targets": targets, "domain": torch.arange(B) % len(DOMAINS)}


def run_step(module, batch) -> torch.Tensor:
    loss, _, _ = module._step(batch)
    loss.backward()
    return loss


@pytest.mark.parametrize("impl", ["auto", "grouped_mm", "capacity", "bmm"])
@pytest.mark.parametrize("warm", ["", "routing.warm_routing=forced", "routing.warm_routing=guided"])
def test_the_step_reads_nothing_on_the_host(impl, warm):
    """auto is the default (grouped_mm on this CPU); the forced and guided warm starts add their own terms."""
    over = [f"model.moe_impl={impl}", "data.round_robin_steps=10"] + ([warm] if warm else [])
    module, batch = module_and_batch(*over)
    with forbid_host_sync():
        loss = run_step(module, batch)
    assert torch.isfinite(loss) and all(p.grad is not None for p in module.model.parameters())


def test_the_check_can_fail():
    """The loop reads each expert's group size on the host; a planted .item() is caught too."""
    module, batch = module_and_batch("model.moe_impl=loop")
    with forbid_host_sync(), pytest.raises(HostSync, match="tolist"):
        run_step(module, batch)
    x = torch.ones(3)
    with forbid_host_sync():
        for read in (lambda: x.sum().item(), lambda: x[x > 0], lambda: bool(x.any()), lambda: x.nonzero(),
                     lambda: float(x.sum()), lambda: x.cpu()):
            with pytest.raises(HostSync):
                read()
    assert x.sum().item() == 3.0  # restored on exit


def test_training_steps_log_nothing_lightning_copies_to_the_host_every_batch(fake_shards, monkeypatch):
    """A `prog_bar=True` metric is converted to a Python number after every batch (a host read per step); the
    training step logs none, and the progress bar reads the loss at logging steps only."""
    import lightning as L

    from tests.training.test_guidance import _fit

    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(dict(trainer.progress_bar_metrics))

    import tests.training.test_guidance as guidance

    monkeypatch.setattr(guidance, "RunState", Watch)  # _fit's first callback, swapped for the watcher
    _fit(fake_shards, steps=3)
    assert len(seen) == 3 and all(m == {} for m in seen), seen
