"""checkpoint.every_minutes with a fake clock: saves come when the interval has passed, and only at optimizer-step
boundaries (with gradient accumulation a wall-clock save that falls due mid-step waits for the step's end)."""

from datetime import timedelta

import lightning as L

from moe_lm.cli import compose
from moe_lm.data.shards import DomainDataModule
from moe_lm.training.checkpointing import AtomicCheckpointIO, StepCheckpoint
from moe_lm.training.lit_module import MoELitModule


class FakeClock:
    """time.monotonic() for Lightning's ModelCheckpoint: 25 s pass at the start of every micro-batch."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_wall_clock_saves_land_on_step_boundaries(fake_shards, tmp_path, monkeypatch):
    import lightning.pytorch.callbacks.model_checkpoint as mc

    clock = FakeClock()
    monkeypatch.setattr(mc, "time", clock)
    saves, seen = [], {}

    class Tick(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            clock.now += 25.0
            seen["batch"] = batch_idx

    real_save = L.Trainer.save_checkpoint

    def spy(trainer, path, *a, **k):
        saves.append((trainer.global_step, seen["batch"]))
        return real_save(trainer, path, *a, **k)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", spy)
    cfg = compose(["model=moe_tiny", "data=domains", f"data.shards={fake_shards}", "data.seq_len=16",
                   "data.batch_size=4", "precision=fp32", "trainer.accumulate_grad_batches=2"])
    dm = DomainDataModule(cfg.data, cfg.seed, accumulate=2)
    module = MoELitModule(cfg, domains=dm.names, experts=[cfg.data.domains[d].expert for d in dm.names])
    every_minute = StepCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True, save_top_k=0,
                                  train_time_interval=timedelta(minutes=1))
    trainer = L.Trainer(max_steps=4, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Tick(), every_minute], accumulate_grad_batches=2,
                        limit_val_batches=0, num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=dm)
    # micro-batches end at 25, 50 | 75, 100 | 125, 150 | 175, 200 s; step boundaries after batches 1, 3, 5, 7:
    # 100 s >= 60 -> save after step 2; 200 - 100 >= 60 -> save after step 4 (Lightning alone saves at 75 s,
    # halfway through step 2)
    assert saves == [(2, 3), (4, 7)]
    assert (tmp_path / "ck" / "last.ckpt").is_file() and not list((tmp_path / "ck").glob("*.tmp"))
