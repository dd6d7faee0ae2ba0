"""The single-process parts of multi-process training: each process's rows of the global batch, the balance loss
on global loads, the strategy mapping and its validation. (Two real processes: tests/integration/test_distributed.py.)"""

import numpy as np
import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import ConfigError
from moe_lm.data.shards import DomainDataModule, PlannedBatches
from moe_lm.model import MoETransformer
from moe_lm.training.distributed import lightning_strategy


@pytest.mark.parametrize("world", [2, 4])
def test_the_processes_rows_make_up_the_global_batch(world, fake_shards, make_domains_cfg):
    dm = DomainDataModule(make_domains_cfg(fake_shards, batch_size=8, round_robin_steps=2), seed=3)
    whole = PlannedBatches(dm.train_shards, dm.plan)
    for k in (0, 1, 5):  # a round-robin batch and mixed ones
        parts = [PlannedBatches(dm.train_shards, dm.plan, rank, world)[k] for rank in range(world)]
        for key in ("input_ids", "targets", "domain"):
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[k][key])
        assert all(int(p["batch_id"]) == k for p in parts)  # the resume state stays the global batch count
    with pytest.raises(ConfigError, match="data.batch_size"):
        PlannedBatches(dm.train_shards, dm.plan, 0, 3)


def test_the_balance_loss_on_global_loads_averages_to_the_global_batch_loss(make_model_cfg):
    """Two halves of a batch, each with the other's expert counts folded in (what the all-reduce gives), have a mean
    aux loss and gradient equal to the whole batch's: what DDP's gradient averaging then computes."""
    cfg = make_model_cfg(scoring="sigmoid")
    moe = MoETransformer(cfg).moe_layers()[0].train()  # initialised weights
    x = torch.randn(2, 16, cfg.d_model)
    whole_aux = moe(x)[1].aux_loss
    whole_grad = torch.autograd.grad(whole_aux, moe.gate.weight)[0]
    halves = [x[:1], x[1:]]
    counts = [moe(h)[1].expert_counts.float() for h in halves]
    mean_counts = (counts[0] + counts[1]) / 2
    moe.counts_reducer = lambda c: mean_counts
    auxes = [moe(h)[1].aux_loss for h in halves]
    mean_aux = (auxes[0] + auxes[1]) / 2
    torch.testing.assert_close(mean_aux, whole_aux)
    torch.testing.assert_close(torch.autograd.grad(mean_aux, moe.gate.weight)[0], whole_grad)
    moe.counts_reducer = None
    local = (moe(halves[0])[1].aux_loss + moe(halves[1])[1].aux_loss) / 2
    assert not torch.allclose(local, whole_aux)  # without the global loads it is another loss


@pytest.mark.parametrize("overrides,key", [
    (["strategy=ddp", "strategy.devices=2"], "strategy"),  # the lines data runs in one process
    (["data=domains", "strategy=ddp", "strategy.devices=3", "data.batch_size=8"], "data.batch_size"),
    (["strategy.devices=2"], "strategy.devices"),  # single is one process
    (["strategy=ddp", "strategy.devices=two"], "strategy.devices"),
    (["strategy=fsdp_zero"], "strategy"),
])
def test_impossible_strategies_are_named(overrides, key):
    with pytest.raises(Exception, match=key):
        compose(overrides)


def test_strategies_map_onto_lightning():
    from lightning.pytorch.strategies import DDPStrategy

    assert lightning_strategy(compose([])) == ("auto", 1, 1)
    ddp, devices, nodes = lightning_strategy(compose(["data=domains", "strategy=ddp", "strategy.devices=2",
                                                      "strategy.num_nodes=3", "data.batch_size=12"]))
    assert isinstance(ddp, DDPStrategy) and devices == 2 and nodes == 3
    assert ddp._ddp_kwargs["broadcast_buffers"] is False  # each process keeps its expert loads until the update
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="strategy: fsdp runs on CUDA"):
            lightning_strategy(compose(["data=domains", "strategy=fsdp", "strategy.devices=2"]))


def test_the_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra: pip install -e '.[slurm]'")
    from hydra import compose as hydra_compose, initialize_config_dir

    from moe_lm.cli import conf_dir
    from moe_lm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("config", ["hydra/launcher=slurm_2x8", "data=domains", "strategy=ddp", "strategy.devices=8",
                                       "strategy.num_nodes=2", "data.batch_size=16"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.nodes == 2 and launcher.tasks_per_node == 8
    assert cfg.strategy.devices == "8" and launcher.gpus_per_node == int(cfg.strategy.devices)
    assert np.prod([launcher.nodes, launcher.tasks_per_node]) == 16
